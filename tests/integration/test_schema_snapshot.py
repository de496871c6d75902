"""The schema as all migrations leave it, kept in one file: pgsessions/sessions/schema.sql.

A reader finds every table, index, view, policy and routine of the current schema there,
instead of replaying the migrations in their head (routines redefined by later migrations
appear once, as they now are). This test migrates a fresh schema, dumps it with pg_dump
(``--schema-only``, no owners or grants) and compares: it fails when a migration changes
the schema and the snapshot was not regenerated. Regenerate with
``PGSESSIONS_WRITE_SNAPSHOT=1 pytest tests/integration/test_schema_snapshot.py``.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path

import pytest

from pgsessions import RouterConfig, SessionRouter, migrate
from pgsessions.devcluster import LocalCluster

SNAPSHOT = Path(__file__).resolve().parent.parent.parent / "pgsessions" / "sessions" / "schema.sql"
HEADER = (
    "-- The pgsessions schema as every migration leaves it (pg_dump --schema-only, no owners\n"
    "-- or grants; {schema} stands for the schema's name). Generated, not applied: the\n"
    "-- migrations in migrations/ are what migrate() runs; a test keeps this file equal to\n"
    "-- them (tests/integration/test_schema_snapshot.py).\n\n"
)


def normalized(dump: str, schema: str) -> str:
    """The dump without comments, SET lines, blank runs and the schema's own name."""
    keep = []
    for line in dump.splitlines():
        if line.startswith(("--", "\\restrict", "\\unrestrict")):
            continue  # comments, and pg_dump's per-run random \restrict key
        if re.match(r"^(SET |SELECT pg_catalog\.set_config)", line):
            continue
        if line.strip() == "" and (not keep or keep[-1] == ""):
            continue
        keep.append(line)
    text = "\n".join(keep).strip() + "\n"
    text = text.replace(f'"{schema}"', "{schema}")
    return re.sub(rf"(?<!\w){re.escape(schema)}(?!\w)", "{schema}", text)


@pytest.mark.owner_sql
async def test_the_snapshot_is_what_the_migrations_make(
    cluster: LocalCluster, router_config: RouterConfig, schema: str
) -> None:
    async with SessionRouter(router_config) as router:
        await migrate(router)
    dump = await asyncio.to_thread(
        subprocess.run,
        [
            str(cluster.bindir / "pg_dump"),
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            "-n",
            schema,
            "-d",
            cluster.primary.dsn,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    got = HEADER + normalized(dump.stdout, schema)
    if os.environ.get("PGSESSIONS_WRITE_SNAPSHOT") == "1":
        SNAPSHOT.write_text(got)
    want = SNAPSHOT.read_text() if SNAPSHOT.exists() else ""
    assert got == want, (
        "pgsessions/sessions/schema.sql differs from what the migrations make: regenerate it "
        "with PGSESSIONS_WRITE_SNAPSHOT=1 pytest tests/integration/test_schema_snapshot.py"
    )


def test_normalizing_names_the_schema_and_drops_noise() -> None:
    dump = '--\n\\restrict k\nSET a = 1;\n\n\nCREATE TABLE t_1.c (\n);\n\nSELECT "t_1".f(), t_1x;\n'
    want = "CREATE TABLE {schema}.c (\n);\n\nSELECT {schema}.f(), t_1x;\n"
    assert normalized(dump, "t_1") == want
