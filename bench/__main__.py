"""`python -m bench` (same as `pgsessions bench`)."""

import sys

from .cli import build_parser, main

sys.exit(main(build_parser().parse_args()))
