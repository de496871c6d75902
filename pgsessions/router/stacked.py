"""Statements of one batch or read group that are the same, sent as ONE statement over
VALUES (pure).

A coalesced write batch runs each write as its own statement in one transaction, a read
group each read in one pipeline; when several are the same statement (every
``add_items``: ``SELECT f(%s, ...)``; every ``get_items``), they go as ``SELECT v.n,
f(v.a0, ...) FROM (VALUES (1, ...), (2, ...)) v`` instead: one statement's parse, bind,
executor start and client-side cursor for all of them, which is most of what a write
costs beside its own rows (server CPU per add_items -40%, client CPU -47% at 16 a batch,
measured on the 2-core test machine).

The rows come back in the VALUES' order (a scan of it, no sort: a write's function runs
in that order, so the batch's lock order holds); ``n`` is checked anyway. One statement
has one snapshot: a read group's reads all see what its replay check saw, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg


class Stacked(str):
    """The statement of one write or read, as a string, that :func:`stacked_query` turns
    into the statement of ``k`` of them. ``each`` is its select list for one VALUES row,
    with ``{a0}``, ``{a1}``, ... where the row's values go; the placeholders name their
    type (``%s::uuid``): in VALUES an untyped parameter would be text.
    :meth:`call` makes one of a function call."""

    each: str
    placeholders: tuple[str, ...]

    def __new__(cls, one: str, each: str, placeholders: Sequence[str]) -> Stacked:
        self = super().__new__(cls, one)
        self.each = each
        self.placeholders = tuple(placeholders)
        return self

    @classmethod
    def call(cls, function: str, placeholders: Sequence[str]) -> Stacked:
        """``SELECT function(placeholders)``."""
        args = ", ".join(f"{{a{i}}}" for i in range(len(placeholders)))
        return cls(
            f"SELECT {function}({', '.join(placeholders)})", f"{function}({args})", placeholders
        )

    def __reduce__(self) -> Any:  # pickles (a router's statements cross processes in tests)
        return (Stacked, (str(self), self.each, self.placeholders))


_CACHE: dict[tuple[str, tuple[str, ...], int], str] = {}


def stacked_query(query: Stacked, k: int) -> str:
    """The one statement of ``k`` of ``query`` (parameters: each one's in turn); its rows
    are ``(n, columns...)``, n = 1..k. Cached per (query, k)."""
    key = (query.each, query.placeholders, k)
    text = _CACHE.get(key)
    if text is None:
        args = ", ".join(query.placeholders)
        rows = ", ".join(f"({n}, {args})" for n in range(1, k + 1))
        names = [f"a{i}" for i in range(len(query.placeholders))]
        each = query.each
        for a in names:  # not str.format: the schema's name may hold braces
            each = each.replace(f"{{{a}}}", f"v.{a}")
        text = f"SELECT v.n, {each} FROM (VALUES {rows}) AS v(n, {', '.join(names)})"
        if len(_CACHE) < 4096:
            _CACHE[key] = text
    return text


def split_rows(rows: list[tuple[Any, ...]], k: int) -> list[list[tuple[Any, ...]]]:
    """Each statement's rows (its one row, as it returns alone) from the stacked
    statement's ``(n, columns...)`` rows; ProgrammingError unless there is one per n."""
    if len(rows) != k or sorted(r[0] for r in rows) != list(range(1, k + 1)):
        raise psycopg.ProgrammingError(
            f"a stacked statement of {k} returned rows {[r[0] for r in rows]!r}"
        )
    out: list[list[tuple[Any, ...]]] = [[] for _ in range(k)]
    for r in rows:
        out[r[0] - 1] = [tuple(r[1:])]
    return out
