"""The docs site's own checks that need no database: the README stays a front door, user docs
carry no history, and the generated command-line page covers every command."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
USER_DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _gen_cli() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_cli", ROOT / "docs" / "gen_cli.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_is_a_front_door() -> None:
    text = (ROOT / "README.md").read_text()
    assert 150 <= len(text.splitlines()) <= 250
    for must in ("make demo", "make test", "## Use it with the Agents SDK", "## The guarantee"):
        assert must in text
    for page in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / page).is_file(), page


# history belongs in CHANGELOG.md and bench/results/, not in what users read
_HISTORY = [
    re.compile(r"\bissues? #?\d+", re.I),
    re.compile(r"(?<![\w/])#\d+\b"),
    # a commit hash: 7-40 hex digits, two letters at least (not 100000d)
    re.compile(r"\b(?=(?:[0-9]*[a-f]){2})(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b"),
    re.compile(r"\bused to\b|\bbefore:|\bafter:", re.I),
]


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_user_docs_carry_no_history(path: Path) -> None:
    found = [
        f"{path.name}:{n}: {line.strip()}"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        for pattern in _HISTORY
        if pattern.search(line)
    ]
    assert not found, "\n".join(found)


def test_the_cli_page_documents_every_command() -> None:
    from pgsessions.cli import build_parser

    page = _gen_cli().render()
    parser = build_parser()
    commands = [name for name, _, _ in _gen_cli()._subcommands(parser)]
    assert {"cluster", "migrate", "status", "demo", "drill", "serve-metrics"} <= set(commands)
    for name in commands:
        assert f"## `pgsessions {name}`" in page, name
        assert f"usage: pgsessions {name}" in page, name
