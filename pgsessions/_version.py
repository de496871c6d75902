"""The version of pgsessions: the one source (pyproject.toml reads it, pgsessions.__version__
re-exports it). Importing it loads nothing else."""

__version__ = "0.1.0"
