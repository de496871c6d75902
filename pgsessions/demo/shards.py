"""The demo over shards: local clusters s1..sN, merged router counters, and where each
conversation lives."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..devcluster import LocalCluster
    from ..router.protocol import Router


def start_local_shards(base: Path, n: int, *, replicas: int = 1) -> list[tuple[LocalCluster, bool]]:
    """Local clusters ``base/s1`` .. ``base/sN`` (as ``cluster up --shards N`` makes them),
    each started unless running; with whether this call started it. A failure stops what
    this call started."""
    from ..devcluster.local import ensure_local_cluster

    out: list[tuple[LocalCluster, bool]] = []
    try:
        for i in range(1, n + 1):
            out.append(ensure_local_cluster(base / f"s{i}", replicas=replicas))
    except BaseException:
        stop_started(out)
        raise
    return out


def stop_started(clusters: Sequence[tuple[LocalCluster, bool]]) -> None:
    """Stop the clusters that were started here."""
    for cluster, started in clusters:
        if started:
            cluster.stop()


def merged_stats(shards: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every shard's ``stats()`` added up: counters summed, ``{role: {reason: n}}`` and
    ``{host: n}`` maps merged (each host belongs to one shard)."""
    out: dict[str, Any] = {}
    for stats in shards.values():
        for key, value in stats.items():
            if isinstance(value, dict):
                into = out.setdefault(key, {})
                for k, v in value.items():
                    if isinstance(v, dict):
                        inner = into.setdefault(k, {})
                        for kk, n in v.items():
                            inner[kk] = inner.get(kk, 0) + n
                    else:
                        into[k] = into.get(k, 0) + v
            elif isinstance(value, int | float):
                out[key] = out.get(key, 0) + value
    return out


def placement(router: Router, session_ids: Sequence[str]) -> dict[str, dict[str, Any]] | None:
    """``{shard: {"sessions": n, "buckets": n, "example": session id}}`` over a sharded
    router's shards (None over one cluster)."""
    from ..router.sharded import ShardedRouter

    if not isinstance(router, ShardedRouter):
        return None
    buckets = router.stats()["buckets"]
    names = {id(r): n for n, r in router.shards.items()}
    where = {sid: names[id(router.cluster_for(sid))] for sid in session_ids}
    counts = Counter(where.values())
    example = {shard: sid for sid, shard in reversed(where.items())}
    return {
        name: {
            "sessions": counts.get(name, 0),
            "buckets": buckets[name],
            "example": example.get(name),
        }
        for name in router.shards
    }


def format_placement(shards: dict[str, dict[str, Any]]) -> str:
    """``shards     s1: 103 conversations (512 buckets; e.g. demo-ab-0003), s2: ...``."""
    parts = [
        f"{n}: {s['sessions']} conversations ({s['buckets']} buckets"
        + (f"; e.g. {s['example']})" if s["example"] else ")")
        for n, s in shards.items()
    ]
    return "shards     " + ", ".join(parts)
