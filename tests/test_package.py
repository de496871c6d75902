"""The package's public surface: names load lazily and the CLI answers --help."""

from __future__ import annotations

import subprocess
import sys

import pytest

import pgsessions


def _run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout.strip()


def test_import_does_not_load_the_agents_sdk() -> None:
    out = _run_python("import sys, pgsessions; print('agents' in sys.modules)")
    assert out == "False"


def test_public_names_resolve_to_their_modules() -> None:
    from pgsessions.router import SessionRouter
    from pgsessions.sessions.session import PostgresSession

    assert pgsessions.SessionRouter is SessionRouter
    assert pgsessions.PostgresSession is PostgresSession
    for name in pgsessions.__all__:
        assert getattr(pgsessions, name) is not None
    assert set(pgsessions.__all__) <= set(dir(pgsessions))


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = pgsessions.no_such_thing  # type: ignore[attr-defined]


def test_cli_help_lists_every_command() -> None:
    out = _run_python(
        "import sys; sys.argv = ['pgsessions', '--help']\n"
        "from pgsessions.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass"
    )
    for command in ("cluster", "migrate", "status", "demo", "drill", "bench", "serve-metrics"):
        assert command in out


def test_cli_parser_does_not_load_the_agents_sdk() -> None:
    # `pgsessions --help` and `cluster up` must not pay the SDK's ~2 s import
    out = _run_python(
        "import sys\n"
        "from pgsessions.cli import build_parser\n"
        "build_parser().parse_args(['drill', 'all'])\n"
        "print(sorted(m for m in sys.modules if m == 'agents' or m.startswith('agents.')))"
    )
    assert out == "[]"
