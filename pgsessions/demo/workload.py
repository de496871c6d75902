"""The demo workload: N conversations through the real Agents SDK ``Runner``."""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING

from agents import RunConfig, Runner

from ..drills.ledger import short_error
from .agent import build_agent, scripted_turn, user_message
from .stats import DemoStats, TimedSession

if TYPE_CHECKING:
    from ..router.protocol import Router


class Conversations:
    """``count`` users, each talking to the agent turn after turn with a think time between.

    ``model`` is None for the offline scripted model, or a real model name.
    """

    def __init__(
        self,
        router: Router,
        stats: DemoStats,
        *,
        count: int = 200,
        prefix: str = "demo",
        model: str | None = None,
        think: tuple[float, float] = (0.5, 2.5),
        model_latency: tuple[float, float] = (0.02, 0.12),
        seed: int | None = None,
    ) -> None:
        self.router = router
        self.stats = stats
        self.session_ids = [f"{prefix}-{i:04d}" for i in range(count)]
        self.model = model
        self.think = think
        self.model_latency = model_latency
        self.agent = build_agent(model)
        self.stop = asyncio.Event()
        self._rng = random.Random(seed)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._converse(sid, random.Random(self._rng.random())))
            for sid in self.session_ids
        ]

    async def finish(self, grace: float = 10.0) -> None:
        """Stop starting turns; wait ``grace`` seconds for running turns, then cancel them."""
        self.stop.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=grace)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending)

    async def _pause(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self.stop.wait()
        except TimeoutError:
            pass

    async def _converse(self, session_id: str, rng: random.Random) -> None:
        session = TimedSession(session_id, self.router, self.stats)
        # spread the first turns over the first think time
        await self._pause(rng.uniform(0, self.think[1]))
        while not self.stop.is_set():
            if self.model is None:
                config = RunConfig(
                    model=scripted_turn(rng, self.model_latency), tracing_disabled=True
                )
            else:
                config = RunConfig(tracing_disabled=True)
            t0 = time.monotonic()
            try:
                result = await Runner.run(
                    self.agent, user_message(rng), session=session, run_config=config
                )
                await session.store_run_usage(result)
                self.stats.usage.add(result.context_wrapper.usage)
                self.stats.turn_done(time.monotonic() - t0)
            except Exception as exc:
                self.stats.errors[short_error(exc)] += 1
            await self._pause(rng.uniform(*self.think))
