"""The command-line reference (docs/cli.md), generated from `pgsessions.cli.build_parser()`.

mkdocs runs it through docs/hooks.py on every build, so the page cannot drift from the
parser; `python docs/gen_cli.py` prints it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

WIDTH = 100


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each sub-command of `parser`, in registration order."""
    found = []
    for action in parser._actions:  # argparse has no public API for this
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) in seen:  # an alias
                    continue
                seen.add(id(sub))
                found.append((name, helps.get(name, ""), sub))
    return found


def _help(parser: argparse.ArgumentParser) -> str:
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=WIDTH)
    return parser.format_help().rstrip()


def _render(parser: argparse.ArgumentParser, path: list[str], level: int, out: list[str]) -> None:
    out.append(f"{'#' * level} `{' '.join(path)}`\n")
    out.append(f"```text\n{_help(parser)}\n```\n")
    for name, _, sub in _subcommands(parser):
        _render(sub, [*path, name], min(level + 1, 4), out)


def render() -> str:
    """The Markdown of the command-line reference."""
    root = Path(__file__).resolve().parent.parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    os.environ["COLUMNS"] = str(WIDTH)
    from pgsessions.cli import build_parser

    parser = build_parser()
    parser.prog = "pgsessions"
    out = [
        "# Command line\n",
        "Every command is a sub-command of `pgsessions` (installed with the package; in a clone "
        "after `make setup`, `.venv/bin/pgsessions`). This page is generated from the argument "
        "parser at each docs build: it is what `pgsessions COMMAND --help` prints.\n",
        "| command | what it does |\n|---|---|",
    ]
    for name, text, _ in _subcommands(parser):
        out.append(f"| [`{name}`](#pgsessions-{name}) | {text.replace('|', '&#124;')} |")
    out.append("")
    for name, _, sub in _subcommands(parser):
        _render(sub, ["pgsessions", name], 2, out)
    out.append("## `pgsessions`\n")
    out.append(f"```text\n{_help(parser)}\n```")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
