"""The per-call paths of a read and a write build no closure cells: a closure anywhere in
a function makes the arguments it captures cells, made on every call, even when the
closure's own path is not taken (garbage the collector counts: ~30% of its passes per turn
at 32 sessions before they went). Rare paths keep their closures in helpers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pgsessions.router.planner import plan_read
from pgsessions.router.readgroups import ReadGroups
from pgsessions.router.session_router import SessionRouter

HOT: list[Callable[..., Any]] = [
    SessionRouter.execute_write,
    SessionRouter.execute_read,
    SessionRouter._write_with_retries,
    plan_read,
    ReadGroups.join,
]


@pytest.mark.parametrize("fn", HOT, ids=lambda f: f.__qualname__)
def test_a_hot_path_makes_no_cells_per_call(fn: Callable[..., Any]) -> None:
    assert fn.__code__.co_cellvars == (), (
        f"{fn.__qualname__} closes over {fn.__code__.co_cellvars}: move the closure to a helper"
    )
