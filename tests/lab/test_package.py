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


def test_version_has_one_source_and_loads_nothing() -> None:
    import importlib.metadata

    from pgsessions._version import __version__

    assert pgsessions.__version__ == __version__ == importlib.metadata.version("pgsessions")
    out = _run_python("import sys, pgsessions; print(pgsessions.__version__, len(sys.modules))")
    assert out.split()[0] == __version__


# The round trip the installed wheel runs, outside the clone (its own directory, its own venv)
_ROUND_TRIP = """
import asyncio, os, sys
import pgsessions
from pgsessions import PostgresSession, RouterConfig, SessionRouter, migrate

assert "site-packages" in pgsessions.__file__, pgsessions.__file__
try:
    import bench  # the benchmark harness is not in the wheel
except ImportError:
    pass
else:
    raise SystemExit(f"bench importable from {bench.__file__}")

async def main():
    async with SessionRouter(RouterConfig.from_env()) as router:
        await migrate(router)
        session = PostgresSession("package-check", router)
        items = [{"role": "user", "content": "hi \\u00e9"}, {"role": "assistant", "content": "ok"}]
        await session.add_items(items)
        got = await session.get_items()
        assert got == items, got
        await session.clear_session()
        print("round trip", pgsessions.__version__, len(got))

asyncio.run(main())
"""


def test_the_wheel_installs_and_runs_outside_the_clone(
    tmp_path_factory: pytest.TempPathFactory, router_config: object
) -> None:
    """CI's package check: build the sdist and the wheel, twine check them, install the wheel
    into a fresh venv in a directory outside the clone, then run `pgsessions --help`,
    `pgsessions bench` (a clear refusal outside a clone) and a session round trip on the
    local cluster from there."""
    import os
    import zipfile
    from pathlib import Path

    from pgsessions import RouterConfig
    from pgsessions._version import __version__

    assert isinstance(router_config, RouterConfig)
    root = Path(__file__).resolve().parent.parent.parent
    work = tmp_path_factory.mktemp("package-check")
    dist = work / "dist"

    def run(*cmd: str | Path, cwd: Path = work, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        return done.stdout + done.stderr

    run(sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", dist, root, cwd=root)
    wheels, sdists = list(dist.glob("*.whl")), list(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(dist.iterdir())
    assert wheels[0].name.startswith(f"pgsessions-{__version__}-")
    run(sys.executable, "-m", "twine", "check", "--strict", wheels[0], sdists[0])

    names = zipfile.ZipFile(wheels[0]).namelist()
    assert not [n for n in names if n.startswith("bench/")], "the wheel holds the bench harness"
    for must in (
        "pgsessions/__init__.py",
        "pgsessions/_version.py",
        "pgsessions/py.typed",
        "pgsessions/cli/__init__.py",
        "pgsessions/devcluster/__init__.py",
        "pgsessions/demo/__init__.py",
        "pgsessions/drills/__init__.py",
        "pgsessions/sessions/migrations/0001_initial.sql",
        f"pgsessions-{__version__}.dist-info/licenses/LICENSE",
    ):
        assert must in names, must

    venv = work / "venv"
    run(sys.executable, "-m", "venv", venv)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    run(venv / "bin" / "python", "-m", "pip", "install", "-q", wheels[0], env=env)

    out = run(venv / "bin" / "pgsessions", "--help", env=env)
    for command in ("cluster", "migrate", "status", "demo", "drill", "serve-metrics", "prune"):
        assert command in out, out
    for args in ([], ["--quick", "--workload", "turn"], ["--help"]):
        bench = subprocess.run(
            [str(venv / "bin" / "pgsessions"), "bench", *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert bench.returncode == 2, bench
        assert "needs the repository's bench/" in bench.stderr, bench
        assert "Traceback" not in bench.stderr, bench.stderr

    env["PGSESSIONS_HOSTS"] = ",".join(router_config.host_list)
    env["PGSESSIONS_SCHEMA"] = router_config.schema
    out = run(venv / "bin" / "python", "-c", _ROUND_TRIP, env=env)
    assert f"round trip {__version__} 2" in out, out
