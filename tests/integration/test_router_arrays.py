"""The binary text[] dumper: the same bytes as psycopg's own, and a real server reads them."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.adapt import PyFormat, Transformer

from pgsessions import SessionRouter
from pgsessions.router.arrays import ADAPTERS, TextArray

CASES = [
    [],
    [None],
    [""],
    ["user", None, "assistant"],
    ["é ü 中文 🙂", "x" * 5000, "\\u0000 as text", 'quote " and , comma {}'],
    [None, None],
]


@pytest.mark.parametrize("values", [c for c in CASES if any(v is not None for v in c)])
def test_same_bytes_as_psycopg(values: list[str | None]) -> None:
    ours = Transformer(ADAPTERS).get_dumper(TextArray(values), PyFormat.BINARY)
    theirs = Transformer().get_dumper(values, PyFormat.BINARY)
    assert _dumped(ours.dump(TextArray(values))) == _dumped(theirs.dump(values))


def _dumped(data: object) -> bytes:
    assert isinstance(data, bytes | bytearray | memoryview)
    return bytes(data)


def test_bytes_without_a_string() -> None:
    # psycopg cannot tell the element type of these: the format, spelled out (ndim, has
    # nulls, element oid 25 = text, length, lower bound 1, then -1 per NULL)
    dump = Transformer(ADAPTERS).get_dumper(TextArray([]), PyFormat.BINARY).dump
    header = bytes.fromhex("00000001 00000000 00000019 00000000 00000001")
    assert _dumped(dump(TextArray([]))) == header
    two_nulls = bytes.fromhex("00000001 00000001 00000019 00000002 00000001 ffffffff ffffffff")
    assert _dumped(dump(TextArray([None, None]))) == two_nulls


@pytest.mark.parametrize("values", CASES)
async def test_server_reads_them(router: SessionRouter, values: list[str | None]) -> None:
    async with router.primary_connection() as conn:
        cur = await conn.execute("SELECT %b::text[]", (TextArray(values),))
        row = await cur.fetchone()
    assert row is not None and row[0] == values


async def test_other_client_encoding(router: SessionRouter) -> None:
    # the dumper encodes as the connection does: a LATIN1 client sends LATIN1 bytes
    async with router.primary_connection() as conn:
        await conn.execute("SET client_encoding = 'LATIN1'")
        try:
            cur = await conn.execute("SELECT %b::text[]", (TextArray(["café", None]),))
            row = await cur.fetchone()
            assert row is not None and row[0] == ["café", None]
            with pytest.raises((UnicodeEncodeError, psycopg.DataError)):
                await conn.execute("SELECT %b::text[]", (TextArray(["中文"]),))
        finally:
            await conn.execute("RESET client_encoding")
