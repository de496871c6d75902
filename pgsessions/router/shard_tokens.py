"""Consistency tokens of a sharded router: each position names its shard (pure).

A token is ``shard:LSN`` (``'s1:0/4000028'``), or several such parts joined by ``+`` once a
caller has combined tokens of several shards (:func:`merge` keeps the newest position per
shard). An LSN means nothing on another cluster: a read uses only the part of the shard it
runs on, and ignores the others.
"""

from __future__ import annotations

import re
from collections.abc import Container, Iterable
from functools import lru_cache

from .lsn import format_lsn, parse_lsn

#: what a shard may be called (also in tokens and PGSESSIONS_SHARDS)
SHARD_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_shard_name(name: str) -> str:
    if not isinstance(name, str) or not SHARD_NAME.match(name):
        raise ValueError(f"shard name {name!r}: use 1-64 letters, digits, '_' or '-'")
    return name


def parse(token: str) -> dict[str, int]:
    """``{shard: lsn}`` of a sharded token; ValueError naming it unless it is one."""
    if not isinstance(token, str):
        raise ValueError(f"not a sharded consistency token: {token!r}")
    return dict(_parts(token))


@lru_cache(maxsize=4096)
def _parts(token: str) -> tuple[tuple[str, int], ...]:
    # a session hands the same token to every read until its next write: parse it once
    return tuple(_parse(token).items())


def _parse(token: str) -> dict[str, int]:
    if not isinstance(token, str) or not token:
        raise ValueError(f"not a sharded consistency token: {token!r}")
    out: dict[str, int] = {}
    for part in token.split("+"):
        shard, sep, lsn = part.partition(":")
        if not sep or not SHARD_NAME.match(shard):
            raise ValueError(f"not a sharded consistency token ('shard:LSN'): {token!r}")
        try:
            value = parse_lsn(lsn)
        except ValueError:
            raise ValueError(f"not a sharded consistency token ('shard:LSN'): {token!r}") from None
        out[shard] = max(value, out.get(shard, value))
    return out


def render(parts: dict[str, int]) -> str:
    return "+".join(f"{shard}:{format_lsn(parts[shard])}" for shard in sorted(parts))


def part_for(token: str | None, shard: str) -> str | None:
    """The LSN text ``token`` holds for ``shard`` (None: none); ValueError for a non-token."""
    if token is None:
        return None
    if isinstance(token, str):
        # a session hands the same token to every read until its next write
        return _part_for(token, shard)
    raise ValueError(f"not a sharded consistency token: {token!r}")


@lru_cache(maxsize=4096)
def _part_for(token: str, shard: str) -> str | None:
    # the common case, a session's own token of this one shard ('s1:0/4000028'), is its LSN
    # text as it stands (validated by the parse); anything else takes the full path
    n = len(shard)
    if token[n : n + 1] == ":" and token.startswith(shard):
        lsn_text = token[n + 1 :]
        if "+" not in lsn_text:
            try:
                parse_lsn(lsn_text)
            except ValueError:
                pass  # the full path names the whole token
            else:
                return lsn_text
    for name, lsn in parse(token).items():
        if name == shard:
            return format_lsn(lsn)
    return None


def newer(a: str | None, b: str | None, shards: Container[str]) -> str | None:
    """The newer of two tokens (a session's and its write's): :func:`merge` of the two.
    The common case, both one part of one of ``shards`` (names known valid), compares
    the two LSNs (parsed through a cache) without parsing the tokens whole: the write's
    token is new every time."""
    if isinstance(a, str) and isinstance(b, str):
        n = a.find(":") + 1
        if n and b[:n] == a[:n] and a[: n - 1] in shards and "+" not in a and "+" not in b:
            try:
                return a if parse_lsn(a[n:]) >= parse_lsn(b[n:]) else b
            except ValueError:
                pass  # merge names the bad one
    return merge((a, b))


def merge(tokens: Iterable[str | None]) -> str | None:
    """The newest position of each shard among ``tokens`` as one token (None: no token)."""
    given = [t for t in tokens if t is not None]
    if len(given) == 2 and isinstance(given[0], str) and isinstance(given[1], str):
        # a session's token and its next write's, of one shard: the common case, parsed
        # (and validated) through the cache
        a, b = _parts(given[0]), _parts(given[1])
        if len(a) == 1 and len(b) == 1 and a[0][0] == b[0][0]:
            return given[0] if a[0][1] >= b[0][1] else given[1]
    return _merge(given)


def _merge(tokens: list[str]) -> str | None:
    if not tokens:
        return None
    best: dict[str, int] = {}
    for token in tokens:
        for shard, lsn in parse(token).items():
            if lsn > best.get(shard, -1):
                best[shard] = lsn
    # a single token comes back as it was given (like SessionRouter's newest)
    return tokens[0] if len(tokens) == 1 else render(best)
