"""Consistency tokens: the newest write position per session (bounded LRU), and caps.

A token is a WAL position. One that lies beyond the primary's own position cannot be
reached by any replica: it was forged, or it predates a failover whose new timeline lost
that WAL. Once a read on the primary has seen such a value, it is capped at the primary's
position (remembered by value, so every session object holding it benefits), so that it
never pins a session to the primary.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable

from .lsn import format_lsn, parse_lsn

#: capped token values remembered per router
_MAX_CAPS = 10_000


class TokenStore:
    """Per-router tokens by conversation (route key), at most ``size`` of them (least
    recently used go).

    Thread-safe: a router and its served twin (calls from other event loops) share one.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._by_session: OrderedDict[Hashable, int] = OrderedDict()
        self._caps: OrderedDict[int, int] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._by_session)

    def get(self, session_id: Hashable) -> str | None:
        lsn = self._by_session.get(session_id)
        return None if lsn is None else format_lsn(self._capped(lsn))

    def remember(self, session_id: Hashable, lsn: int) -> None:
        """Keep ``lsn`` for ``session_id`` if it is newer than what is known."""
        with self._lock:
            old = self._by_session.get(session_id)
            if old is None or lsn > old:
                self._by_session[session_id] = lsn
            self._by_session.move_to_end(session_id)
            while len(self._by_session) > self.size:
                self._by_session.popitem(last=False)

    def forget(self, session_id: Hashable) -> None:
        with self._lock:
            self._by_session.pop(session_id, None)

    def required(self, session_id: Hashable | None, token: str | None) -> int | None:
        """The newest of ``token`` (validated: ValueError naming it) and the session's
        remembered token, each capped; None when neither exists."""
        best = self._capped(parse_lsn(token)) if token is not None else None
        if session_id is not None:
            mine = self._by_session.get(session_id)
            if mine is not None:
                mine = self._capped(mine)
                best = mine if best is None or mine > best else best
        return best

    def cap(self, lsn: int, primary_lsn: int) -> bool:
        """Record that ``lsn`` lies beyond the primary's ``primary_lsn``; True if new."""
        if lsn <= primary_lsn or self._caps.get(lsn) == primary_lsn:
            return False
        with self._lock:
            self._caps[lsn] = primary_lsn
            while len(self._caps) > _MAX_CAPS:
                self._caps.popitem(last=False)
        return True

    def _capped(self, lsn: int) -> int:
        if not self._caps:
            return lsn
        return self._caps.get(lsn, lsn)


def newest(tokens: Iterable[str | None]) -> str | None:
    """The newest of ``tokens`` as it was given (None when all are None); ValueError naming
    one that is not a token."""
    best: tuple[int, str] | None = None
    for token in tokens:
        if token is None:
            continue
        lsn = parse_lsn(token)
        if best is None or lsn > best[0]:
            best = (lsn, token)
    return None if best is None else best[1]
