"""The house rules the code must keep (no server needed): the library never imports the
tools around it, and router/ never reaches into what is stored."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent.parent / "pgsessions"
LIBRARY = ("router", "sessions", "monitoring", "export", "analytics", "retention")
TOOLS = ("devcluster", "drills", "demo", "cli")


def imported(path: Path, root: Path = PKG.parent) -> set[str]:
    """Every pgsessions module ``path`` (under ``root``) imports, at the top or inside a
    function."""
    package = path.relative_to(root).with_suffix("").parts[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            out.add(mod)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("pgsessions")}


def test_the_library_never_imports_the_tools() -> None:
    offences = []
    for area in LIBRARY:
        for path in sorted((PKG / area).rglob("*.py")):
            for mod in imported(path):
                if any(mod.startswith(f"pgsessions.{t}") for t in TOOLS):
                    offences.append(f"{path.relative_to(PKG)} imports {mod}")
    assert not offences, offences


def test_the_router_knows_no_schema() -> None:
    offences = []
    for path in sorted((PKG / "router").rglob("*.py")):
        for mod in imported(path):
            if any(mod.startswith(f"pgsessions.{a}") for a in LIBRARY if a != "router"):
                offences.append(f"{path.relative_to(PKG)} imports {mod}")
    assert not offences, offences


def test_the_rule_would_see_an_offence(tmp_path: Path) -> None:
    probe = tmp_path / "pgsessions" / "sessions" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("def f():\n    from ..devcluster import LocalCluster\n")
    assert imported(probe, tmp_path) == {"pgsessions.devcluster"}
