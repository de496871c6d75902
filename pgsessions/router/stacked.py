"""Writes of one batch that call the same function, sent as ONE statement over VALUES (pure).

A coalesced batch runs each write as its own statement in one transaction; when several
writes are calls of one SQL function (``SELECT f(%s, ...)``: every ``add_items``), the
batch sends them as ``SELECT v.n, f(v.a0, ...) FROM (VALUES (1, ...), (2, ...)) v``
instead: one statement's parse, bind, executor start and client-side cursor for all of
them, which is most of what a write costs beside its own rows (server CPU per write
-40%, client CPU per write -47% at 16 writes, measured on the 2-core test machine).

The rows come back in the VALUES' order (a scan of it, no sort: the function runs in that
order, so the batch's lock order holds); ``n`` is checked anyway.

The stacked statement numbers its parameters (``$1``, ``$2``, ...) and runs on a raw
cursor: psycopg parses a ``%s`` statement on every execution once it has more than 50
parameters (its cache of parsed statements skips those), so a batch of 8 writes or more
would be parsed again each time, on the client, and leave its pieces to the collector.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import psycopg


class Stacked(str):
    """``SELECT function(placeholders)``, as a string (the statement of one write), that
    :func:`stacked_query` turns into the statement of ``k`` such writes. Placeholders name
    their type (``%s::uuid``): in VALUES an untyped parameter would be text."""

    function: str
    placeholders: tuple[str, ...]

    def __new__(cls, function: str, placeholders: Sequence[str]) -> Stacked:
        for p in placeholders:
            if p[:2] not in ("%s", "%b"):
                raise ValueError(f"a placeholder starts with %s or %b, got {p!r}")
        self = super().__new__(cls, f"SELECT {function}({', '.join(placeholders)})")
        self.function = function
        self.placeholders = tuple(placeholders)
        return self

    def __reduce__(self) -> Any:  # copy and pickle: str's own way calls __new__ with the text
        return (Stacked, (self.function, self.placeholders))


@lru_cache(maxsize=256)
def stacked_query(query: Stacked, k: int) -> str:
    """The one statement of ``k`` writes of ``query`` (parameters: each write's in turn,
    numbered ``$1``... for a raw cursor, each keeping its placeholder's cast); its rows are
    ``(n, result)``, n = 1..k. A ``%b`` parameter is sent as its dumper prefers (binary for
    the router's ``TextArray``)."""
    width = len(query.placeholders)
    casts = [p[2:] for p in query.placeholders]
    rows = ", ".join(
        f"({n + 1}, " + ", ".join(f"${n * width + i + 1}{c}" for i, c in enumerate(casts)) + ")"
        for n in range(k)
    )
    names = [f"a{i}" for i in range(width)]
    return (
        f"SELECT v.n, {query.function}({', '.join('v.' + a for a in names)})"
        f" FROM (VALUES {rows}) AS v(n, {', '.join(names)})"
    )


def split_rows(rows: list[tuple[Any, ...]], k: int) -> list[list[tuple[Any, ...]]]:
    """Each write's rows (``[(result,)]``, as its own statement returns) from the stacked
    statement's ``(n, result)`` rows; ProgrammingError unless there is one per write."""
    if len(rows) != k or sorted(r[0] for r in rows) != list(range(1, k + 1)):
        raise psycopg.ProgrammingError(
            f"a stacked statement of {k} writes returned rows {[r[0] for r in rows]!r}"
        )
    out: list[list[tuple[Any, ...]]] = [[] for _ in range(k)]
    for r in rows:
        out[r[0] - 1] = [tuple(r[1:])]
    return out
