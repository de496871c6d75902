"""mkdocs hooks (mkdocs.yml `hooks:`): adds the generated command-line reference, cli.md, and
drops the Sphinx roles (``:meth:`x` ``) of the docstrings from the API reference: the code keeps
them for editors, the page shows the name."""

from __future__ import annotations

import importlib.util
import re
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


_ROLE = re.compile(r":(?:meth|class|func|attr|mod|exc|data|obj|const):(?=<code>)")


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    return _ROLE.sub("", html)
