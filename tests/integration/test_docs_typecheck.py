"""The docs' examples that cannot run here (they need an external system: a certificate, two
clusters, a real deployment) are type-checked instead: mypy over each, against the
installed pgsessions and Agents SDK, so a renamed argument or method fails the suite."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pgsessions
from tests.integration.test_docs_examples import ALL, PROVIDED, free_names

NOT_RUN = [b for b in ALL if not b.run]


def as_module(code: str) -> str:
    """The block as a module mypy accepts: inside an async function (top-level ``await`` and
    ``async with`` are fine in docs), with what the docs runner gives a fragment: the public
    names of pgsessions, ``Runner``, and ``router``/``config``/``agent`` as parameters."""
    given = sorted(free_names(code) & PROVIDED)
    params = ", ".join(f"{name}: Any" for name in given)
    body = textwrap.indent(code, "    ")
    return (
        "from typing import Any\n\n"
        f"from agents import Runner\nfrom pgsessions import {', '.join(pgsessions.__all__)}\n\n\n"
        f"async def _example({params}) -> None:\n{body}\n"
    )


def test_there_are_compile_only_examples() -> None:
    assert NOT_RUN, "no compile-only example: this test would check nothing"


def test_compile_only_examples_type_check(tmp_path: Path) -> None:
    files = []
    for i, block in enumerate(NOT_RUN):
        path = tmp_path / f"example_{i}.py"
        path.write_text(as_module(block.code))
        files.append((path, block.where))
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--ignore-missing-imports",
         "--config-file", "/dev/null", *(str(p) for p, _ in files)],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    report = run.stdout
    for path, where in files:
        report = report.replace(str(path), where)
    assert run.returncode == 0, report


@pytest.mark.parametrize("bad", ["import pgsessions\npgsessions.SessionRouter.nope()\n"])
def test_the_check_would_catch_a_wrong_name(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "bad.py"
    path.write_text(as_module(bad))
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--ignore-missing-imports",
         "--config-file", "/dev/null", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert run.returncode != 0 and "nope" in run.stdout
