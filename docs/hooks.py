"""mkdocs hooks (mkdocs.yml `hooks:`): adds the generated command-line reference, cli.md."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files


def _gen_cli() -> Any:
    spec = importlib.util.spec_from_file_location("gen_cli", Path(__file__).with_name("gen_cli.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, "cli.md", content=_gen_cli().render()))
    return files
