"""The mover of ``pgsessions drill shard-move --kill-mover``, run as a process of its own:
``python -m pgsessions.drills.mover_process JSON`` rebalances the shards the JSON names and
prints each progress step as a JSON line, then the results. With ``kill_at`` set it sends
itself SIGKILL (a real crash: no clean-up, no ``finally``) at the first step of that phase.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
from typing import Any

from ..router import RouterConfig, ShardedRouter
from ..shards import MoveProgress, rebalance


def _emit(kind: str, payload: Any) -> None:
    print(json.dumps({kind: payload}), flush=True)


async def _main(spec: dict[str, Any]) -> None:
    kill_at = spec.get("kill_at")

    def progress(p: MoveProgress) -> None:
        _emit("progress", dataclasses.asdict(p))
        if p.phase == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    configs = {name: RouterConfig(**c) for name, c in spec["shards"].items()}
    async with ShardedRouter(configs, buckets=spec["buckets"]) as router:
        results = await rebalance(router, limit=spec["limit"], progress=progress)
    _emit("results", [dataclasses.asdict(r) for r in results])


if __name__ == "__main__":
    asyncio.run(_main(json.loads(sys.argv[1])))
