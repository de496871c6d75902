"""``text[]`` parameters in PostgreSQL's binary array format, without psycopg's generic list
machinery (which looks up a dumper per element): every ``add_items`` sends three of them.

Wrap a list of ``str | None`` in :class:`TextArray` and pass it as a ``%b`` parameter on a
connection opened with :data:`ADAPTERS` as its context (the router's connections are).
"""

from __future__ import annotations

import struct
from typing import Any, TypeVar

import psycopg
from psycopg.abc import AdaptContext, Buffer
from psycopg.adapt import Dumper
from psycopg.pq import Format

#: header of a one-dimensional array: ndim, has-nulls flag, element type (text), length,
#: lower bound
_HEADER = struct.Struct("!iiiii")
_LENGTH = struct.Struct("!i")
_NULL = _LENGTH.pack(-1)
_TEXT_OID = 25
_TEXT_ARRAY_OID = 1009


_S = TypeVar("_S", bound=str | None)


class TextArray(list[_S]):
    """A list of strings (or None) sent as a binary ``text[]``."""

    __slots__ = ()


class TextArrayDumper(Dumper):
    """Binary ``text[]`` from a :class:`TextArray`, in the connection's client encoding."""

    format = Format.BINARY
    oid = _TEXT_ARRAY_OID

    def __init__(self, cls: type, context: AdaptContext | None = None) -> None:
        super().__init__(cls, context)
        conn = self.connection
        self._encoding = conn.info.encoding if conn is not None else "utf-8"

    def dump(self, obj: Any) -> Buffer:
        encoding = self._encoding
        pack = _LENGTH.pack
        parts = [b""]
        nulls = 0
        for x in obj:
            if x is None:
                parts.append(_NULL)
                nulls = 1
            else:
                data = x.encode(encoding)
                parts.append(pack(len(data)))
                parts.append(data)
        parts[0] = _HEADER.pack(1, nulls, _TEXT_OID, len(obj), 1)
        return b"".join(parts)


#: psycopg's default adapters plus :class:`TextArrayDumper` (a connection's ``context=``)
ADAPTERS = psycopg.adapt.AdaptersMap(psycopg.adapters)
ADAPTERS.register_dumper(TextArray, TextArrayDumper)
