"""Deliberately broken variants, to prove that the drill can fail (tests, ``--break-router``).

- ``skip-token-check``: reads go to any eligible replica, ignoring the session's consistency
  token and the bounded-staleness position (a router subclass; not a public setting);
- ``drop-batch``: one batch in ten is acknowledged without being written.
"""

from __future__ import annotations

from typing import Any

from ..router import SessionRouter
from ..sessions import PostgresSession


class TokenIgnoringRouter(SessionRouter):
    """Serves reads from any eligible replica, whatever the session has written."""

    _skip_position_check = True


class DroppingSession(PostgresSession):
    """Acknowledges one ``add_items`` batch in ten without writing it."""

    _calls = 0

    async def add_items(self, items: list[Any], *, wrapper: Any = None) -> None:
        self._calls += 1
        if self._calls % 10 == 5:
            return
        await super().add_items(items, wrapper=wrapper)
