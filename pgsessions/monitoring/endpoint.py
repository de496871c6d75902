"""What /metrics and /healthz answer, shared by the HTTP server and the ASGI app."""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from .collector import (
    REGISTRY,
    collector_for,
    instrument,
    known_primary,
    router_is_open,
    routers_in,
)

if TYPE_CHECKING:
    from ..router.protocol import Router


JSON = "application/json"


class Endpoint:
    """The answers of one metrics endpoint: ``routers`` (all of the registry's if None)."""

    def __init__(
        self,
        routers: Router | Sequence[Router] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry if registry is not None else REGISTRY
        if routers is None:
            self._routers: list[Router] | None = None
        else:
            given = [routers] if not isinstance(routers, Sequence) else list(routers)
            for r in given:  # a ShardedRouter's clusters get their shard label
                instrument(r, self.registry)
            # a router over several clusters (shards) answers for each of them
            self._routers = [c for r in given for c in r.clusters()]

    @property
    def routers(self) -> list[Router]:
        return self._routers if self._routers is not None else routers_in(self.registry)

    def metrics(
        self, accept: str = "", accept_encoding: str = ""
    ) -> tuple[bytes, list[tuple[str, str]]]:
        """The exposition (text format, or OpenMetrics if asked for) and its headers."""
        encoder, content_type = choose_encoder(accept)
        body = encoder(self.registry)
        headers = [("Content-Type", content_type)]
        if gzip_accepted(accept_encoding) and len(body) > 1024:
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        return body, headers

    def health(self) -> tuple[int, bytes]:
        """200 and a small JSON body when every router knows a reachable primary, else 503.

        A router in split brain knows no primary (it refuses writes).
        """
        report: dict[str, object] = {}
        ok = True
        routers = self.routers
        collector = collector_for(self.registry)
        for r in routers:
            metrics = collector.get(r)
            shard = metrics.shard if metrics is not None else None
            topo = r.topology()
            is_open = router_is_open(r)
            primary = known_primary(topo) if is_open else None
            ok = ok and primary is not None
            report[r.config.name] = {
                **({"shard": shard} if shard is not None else {}),
                "open": is_open,
                "primary": primary,
                "eligible_replicas": len(topo.eligible()),
                "hosts_up": sum(1 for h in topo.hosts if h.up),
                "hosts": len(topo.hosts),
                **({"split_brain": list(topo.split_brain)} if topo.split_brain else {}),
            }
        ok = ok and bool(routers)
        body = {"status": "ok" if ok else "unavailable", "routers": report}
        return (200 if ok else 503), json.dumps(body).encode()
