"""Deliberately broken variants, to prove that the drill can fail (tests, ``--break-router``).

- ``skip-token-check``: reads go to any eligible replica, ignoring the session's consistency
  token and the bounded-staleness position (a router whose read planner is wrapped to
  require no position; nothing in the router itself knows of it);
- ``drop-batch``: one batch in ten is acknowledged without being written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..router import SessionRouter
from ..router.planner import plan_read
from ..sessions import PostgresSession

Planner = Callable[..., Any]


def position_blind(plan: Planner) -> Planner:
    """``plan`` as if no read required any position: a stale replica serves it."""

    def plan_without_position(hosts: Any, primary: Any, required: Any, *a: Any, **k: Any) -> Any:
        return plan(hosts, primary, None, *a, **k)

    return plan_without_position


class TokenIgnoringRouter(SessionRouter):
    """Serves reads from any eligible replica, whatever the session has written."""

    _plan_read = staticmethod(position_blind(plan_read))


class DroppingSession(PostgresSession):
    """Acknowledges one ``add_items`` batch in ten without writing it."""

    _calls = 0

    async def add_items(self, items: list[Any], *, wrapper: Any = None) -> None:
        self._calls += 1
        if self._calls % 10 == 5:
            return
        await super().add_items(items, wrapper=wrapper)
