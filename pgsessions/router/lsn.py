"""PostgreSQL LSNs as integers, and consistency tokens."""

from __future__ import annotations

import re
from functools import lru_cache

#: what ``pg_lsn::text`` prints: two hex numbers of at most 32 bits each
_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def parse_lsn(text: str) -> int:
    """``'0/4000028'`` -> 67108904, any value in 0..2**64-1.

    Only PostgreSQL's own form is accepted (no sign, prefix, underscore or space inside): a
    token may come from a cookie or a header. Raises ValueError naming the bad value.
    """
    if not isinstance(text, str):
        return _parse(text)
    # a write's token is parsed by the router, its pool's host and the session: once here
    return _parse_cached(text)


@lru_cache(maxsize=1024)
def _parse_cached(text: str) -> int:
    return _parse(text)


def _parse(text: object) -> int:
    m = _LSN.fullmatch(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise ValueError(
            f"not a PostgreSQL LSN (expected two hex numbers like '0/4000028'): {text!r}"
        )
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
