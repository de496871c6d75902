"""The drill workload: many sessions, each writing numbered batches and reading them back.

Each session runs one operation at a time: ``add_items`` of batch ``n`` (two items), then
``get_items`` of its latest items, then a short pause. Every call goes into the ledger.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..sessions import PostgresSession
from .ledger import Ledger, current_read

if TYPE_CHECKING:
    from ..router.protocol import Router

SessionFactory = Callable[[str, "Router"], PostgresSession]
ITEMS_PER_BATCH = 2
READ_LIMIT = 3 * ITEMS_PER_BATCH


def make_batch(session_id: str, n: int, pad: int = 120) -> list[Any]:
    """Batch ``n``: a user and an assistant message tagged ``session|n|k|`` (random padding
    so that WAL volume is real: TOAST would compress repeated text)."""
    noise = os.urandom(pad // 2).hex()
    return [
        {"role": "user", "content": f"{session_id}|{n}|0|question {noise}"},
        {
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [
                {
                    "type": "output_text",
                    "text": f"{session_id}|{n}|1|answer {noise}",
                    "annotations": [],
                }
            ],
        },
    ]


def item_tag(item: Any) -> tuple[str, int, int] | None:
    """(session, batch, index) of an item made by :func:`make_batch`, else None."""
    content = item.get("content") if isinstance(item, dict) else None
    if isinstance(content, list) and content and isinstance(content[0], dict):
        content = content[0].get("text")
    if not isinstance(content, str):
        return None
    parts = content.split("|", 3)
    if len(parts) < 4:
        return None
    try:
        return parts[0], int(parts[1]), int(parts[2])
    except ValueError:
        return None


def tag_of_text(text: str) -> tuple[int, int] | None:
    parts = text.split("|", 3)
    if len(parts) < 4:
        return None
    try:
        return int(parts[1]), int(parts[2])
    except ValueError:
        return None


class DrillWorkload:
    """``sessions`` concurrent sessions over ``router``, recorded in ``ledger``."""

    def __init__(
        self,
        router: Router,
        ledger: Ledger,
        *,
        prefix: str,
        sessions: int = 24,
        think: float = 0.02,
        session_factory: SessionFactory | None = None,
    ) -> None:
        self.router = router
        self.ledger = ledger
        self.prefix = prefix
        self.session_ids = [f"{prefix}-{i:03d}" for i in range(sessions)]
        self.think = think
        self.factory: SessionFactory = session_factory or (lambda sid, r: PostgresSession(sid, r))
        self.stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(sid)) for sid in self.session_ids]

    async def finish(self, within: float = 60.0) -> None:
        """Ask every session to stop after its current operation and wait for them."""
        self.stop.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=within)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending)

    async def _worker(self, session_id: str) -> None:
        session = self.factory(session_id, self.router)
        rng = random.Random(session_id)
        n = 0
        while not self.stop.is_set():
            n += 1
            w = self.ledger.write_started(session_id, n)
            try:
                await session.add_items(make_batch(session_id, n))
                self.ledger.write_acked(w, session.consistency_token)
            except Exception as exc:
                self.ledger.write_failed(w, exc)
            if self.stop.is_set():
                break
            r = self.ledger.read_started(session_id)
            reset = current_read.set(r)
            try:
                items = await session.get_items(limit=READ_LIMIT)
                got = []
                for it in items:
                    tag = item_tag(it)
                    if tag is not None and tag[0] == session_id:
                        got.append((tag[1], tag[2]))
                self.ledger.read_done(r, got)
            except Exception as exc:
                self.ledger.read_failed(r, exc)
            finally:
                current_read.reset(reset)
            await asyncio.sleep(self.think * (0.5 + rng.random()))
