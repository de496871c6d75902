"""Property: any JSON value the encoder accepts comes back equal after a write and a read."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgsessions import PostgresSession, RouterConfig, SessionRouter, migrate

# every code point, including U+0000 and lone surrogates
text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**128), max_value=2**128)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(text, children, max_size=5),
    max_leaves=25,
)
items = st.dictionaries(text, json_values, max_size=6)


def same(a: Any, b: Any) -> bool:
    """Equality that also tells -0.0 from 0.0 and keeps key order."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


class Loop:
    """A private event loop with an open, migrated router (hypothesis drives sync tests)."""

    def __init__(self, config: RouterConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.router = SessionRouter(config)
        self.run(self.router.open())
        self.run(migrate(self.router))
        self.n = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.run(self.router.close())
        self.loop.close()


@pytest.fixture
def private_loop(router_config: RouterConfig) -> Iterator[Loop]:
    lp = Loop(router_config)
    try:
        yield lp
    finally:
        lp.close()


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(items, min_size=1, max_size=4))
def test_items_round_trip(private_loop: Loop, batch: list[dict[str, Any]]) -> None:
    private_loop.n += 1
    session = PostgresSession(f"prop-{private_loop.n}", private_loop.router)

    async def go() -> tuple[list[Any], list[Any], Any]:
        await session.add_items(batch)
        everything = await session.get_items()
        last = await session.get_items(1)
        popped = await session.pop_item()
        return everything, last, popped

    everything, last, popped = private_loop.run(go())
    assert same(everything, batch)
    assert same(last, batch[-1:])
    assert same(popped, batch[-1])
