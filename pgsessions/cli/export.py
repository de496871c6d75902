"""`pgsessions export` and `pgsessions import`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .common import (
    add_hosts_arguments,
    add_schema_argument,
    fail,
    run_on_router,
)
from .progress import Progress

if TYPE_CHECKING:
    from ..router.protocol import Router


def _common(p: argparse.ArgumentParser) -> None:
    add_hosts_arguments(p)
    add_schema_argument(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def add_export_commands(sub: Any) -> None:
    """Add ``export`` and ``import``."""
    ex = sub.add_parser(
        "export",
        help="write conversations (items in order, usage rows) as JSON Lines",
        description="Export one or more sessions, those whose metadata contains --metadata, "
        "or everything, as JSON Lines. Items are written as the exact text stored (U+0000, "
        "large numbers and key order kept). Each conversation is read in one statement (one "
        "snapshot), on a caught-up replica when there is one.",
    )
    _common(ex)
    ex.add_argument("--session", action="append", metavar="ID", help="export this session")
    ex.add_argument(
        "--metadata", metavar="JSON", help='only conversations containing e.g. {"tenant":"acme"}'
    )
    ex.add_argument("-o", "--output", type=Path, help="write here (default: standard output)")
    ex.set_defaults(func=run_export_command)

    im = sub.add_parser(
        "import",
        help="load an export, or the SDK's SQLiteSession/SQLAlchemySession tables (idempotent)",
        description="Load conversations into pgsessions, one transaction per conversation. "
        "A conversation that exists with the same content is left as it is (running an "
        "import twice changes nothing); one that exists with other content is a conflict, "
        "left alone unless --replace. Writes run on the primary as the schema owner.",
    )
    _common(im)
    src = im.add_mutually_exclusive_group(required=True)
    src.add_argument("file", nargs="?", type=Path, help="an export file ('-': standard input)")
    src.add_argument("--from-sqlite", type=Path, metavar="PATH", help="an SQLiteSession file")
    src.add_argument(
        "--from-sqlalchemy", metavar="URL", help="SQLAlchemySession tables (an async URL)"
    )
    im.add_argument("--sessions-table", default="agent_sessions", help="SDK sessions table")
    im.add_argument("--messages-table", default="agent_messages", help="SDK messages table")
    im.add_argument(
        "--replace", action="store_true", help="replace conversations that exist with other content"
    )
    im.set_defaults(func=run_import_command)


def run_export_command(args: argparse.Namespace) -> int:
    try:
        metadata = json.loads(args.metadata) if args.metadata else None
        if metadata is not None and not isinstance(metadata, dict):
            raise ValueError("--metadata must be a JSON object")
        if metadata is not None and args.session:
            raise ValueError("give --session or --metadata, not both")
        out = open(args.output, "w", encoding="utf-8", newline="\n") if args.output else None
    except (ValueError, OSError) as exc:
        return fail("export", exc)
    try:
        return run_on_router(
            "export",
            args,
            lambda router: _export(args, router, metadata, out or sys.stdout),
            schema=args.schema,
            errors=(OSError,),
        )
    finally:
        if out is not None:
            out.close()


async def _export(args: argparse.Namespace, router: Router, metadata: Any, out: IO[str]) -> int:
    import psycopg

    from ..errors import RouterError
    from ..export.dump import export_lines

    progress = Progress()
    counts = {"conversations": 0, "items": 0, "usage_rows": 0}
    t0 = time.monotonic()
    try:
        async for line in export_lines(router, session_ids_=args.session, metadata=metadata):
            out.write(line)
            out.write("\n")
            kind = line[line.index(":") + 1 : line.index(",")].strip().strip('"')
            key = {"conversation": "conversations", "item": "items", "usage": "usage_rows"}
            if kind in key:
                counts[key[kind]] += 1
            progress.show(
                f"exported {counts['conversations']} conversations, {counts['items']} items"
            )
    except (RouterError, psycopg.Error, OSError) as exc:
        print(f"pgsessions export: {exc}", file=sys.stderr)
        return 1
    summary = {**counts, "seconds": round(time.monotonic() - t0, 2)}
    progress.show("", final=True)
    where = sys.stdout if args.output else sys.stderr
    if args.json:
        print(json.dumps(summary), file=where)
    else:
        print(
            f"exported {counts['conversations']} conversations, {counts['items']} items, "
            f"{counts['usage_rows']} usage rows in {summary['seconds']}s",
            file=where,
        )
    return 0


def _lines(path: Path) -> Iterator[str]:
    # split on "\n" only: U+2028 and friends may appear inside strings
    stream = sys.stdin.buffer if str(path) == "-" else open(path, "rb")
    try:
        for raw in stream:
            yield raw.decode("utf-8")
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def run_import_command(args: argparse.Namespace) -> int:
    return run_on_router(
        "import",
        args,
        lambda router: _import(args, router),
        schema=args.schema,
        errors=(FileNotFoundError, RuntimeError),
    )


async def _import(args: argparse.Namespace, router: Router) -> int:
    import psycopg

    from ..errors import ExportFormatError
    from ..export.load import ImportSummary, import_records
    from ..export.records import ConversationRecord, read_export
    from ..export.sdk_sources import SourceStats, safe_url, sqlalchemy_records, sqlite_records
    from ..router import RouterError

    stats = SourceStats()
    tables = {"sessions_table": args.sessions_table, "messages_table": args.messages_table}
    records: Any
    if args.from_sqlite is not None:
        records = sqlite_records(args.from_sqlite, stats=stats, **tables)
        source = str(args.from_sqlite)
    elif args.from_sqlalchemy is not None:
        records = sqlalchemy_records(args.from_sqlalchemy, stats=stats, **tables)
        source = safe_url(args.from_sqlalchemy)
    else:
        if str(args.file) != "-" and not args.file.is_file():
            raise FileNotFoundError(f"no export file at {args.file}")
        records = read_export(_lines(args.file))
        source = str(args.file)
    progress = Progress()

    def show(s: ImportSummary) -> None:
        progress.show(
            f"imported {s.imported}, unchanged {s.unchanged}, replaced {s.replaced}, "
            f"conflicts {len(s.conflicts)}, errors {len(s.errors)}"
        )

    async def guarded() -> AsyncIterator[ConversationRecord]:
        if hasattr(records, "__aiter__"):
            async for rec in records:
                yield rec
        else:
            for rec in records:
                yield rec

    t0 = time.monotonic()
    try:
        summary = await import_records(router, guarded(), replace=args.replace, progress=show)
    except ExportFormatError as exc:
        print(
            f"pgsessions import: {source}: {exc} (nothing after that line was read)",
            file=sys.stderr,
        )
        return 1
    except (RouterError, psycopg.Error, OSError) as exc:
        print(f"pgsessions import: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the source database (SQLAlchemy, sqlite3) failed
        if "sqlalchemy" not in type(exc).__module__ and not isinstance(exc, ValueError):
            raise
        print(f"pgsessions import: reading {source}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    progress.show("", final=True)
    report = {
        "source": source,
        **summary.as_dict(),
        "skipped_source_rows": stats.skipped_rows,
        "seconds": round(time.monotonic() - t0, 2),
    }
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        print(
            f"{source}: imported {summary.imported}, unchanged {summary.unchanged}, replaced "
            f"{summary.replaced}, conflicts {len(summary.conflicts)}, errors "
            f"{len(summary.errors)} ({summary.items} items, {summary.usage_rows} usage rows "
            f"written; {stats.skipped_rows} source rows skipped: not JSON) in {report['seconds']}s"
        )
        for sid in summary.conflicts[:10]:
            print(f"  conflict  {sid!r} exists with other content (--replace to overwrite)")
        for err in summary.errors[:10]:
            print(f"  error     {err}")
    return 0 if summary.ok else 1
