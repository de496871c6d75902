"""The demo's closing summary: what ran where, latency, usage totals read from usage_logs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..sessions.sql.tools import usage_totals_sql
from .shards import format_placement, placement
from .stats import DemoStats, percentile
from .view import router_stats

if TYPE_CHECKING:
    from ..router.protocol import Router

USAGE_KEYS = ("runs", "requests", "input_tokens", "output_tokens", "total_tokens")


async def usage_from_db(router: Router, prefix: str) -> dict[str, int]:
    """Totals over this run's rows of ``usage_logs`` (read on the primary of each cluster)."""
    query = usage_totals_sql(router.config.schema)
    totals = dict.fromkeys(USAGE_KEYS, 0)
    for cluster in router.clusters():
        async with cluster.primary_connection() as conn:
            cur = await conn.execute(query, (prefix + "-%",))
            row = await cur.fetchone()
        assert row is not None
        for k, v in zip(USAGE_KEYS, row, strict=True):
            totals[k] += int(v)
    return totals


def _lat(values: list[float]) -> dict[str, Any]:
    p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
    return {
        "count": len(values),
        "p50_ms": None if p50 is None else round(p50 * 1000, 2),
        "p99_ms": None if p99 is None else round(p99 * 1000, 2),
    }


async def summarize(
    router: Router,
    stats: DemoStats,
    *,
    prefix: str,
    elapsed: float,
    sessions: int,
    model: str,
    source: str,
    metrics_url: str | None,
    interrupted: bool,
    session_ids: Sequence[str] = (),
) -> dict[str, Any]:
    rs = router_stats(router)
    reads: dict[str, dict[str, int]] = rs.get("reads", {})
    by_role = {role: sum(rr.values()) for role, rr in reads.items()}
    total_reads = sum(by_role.values())
    roles = {h.host: h.role for h in router.topology().hosts}
    db_usage = await usage_from_db(router, prefix)
    mine = stats.usage.as_dict()
    return {
        "duration_s": round(elapsed, 2),
        "interrupted": interrupted,
        "sessions": sessions,
        "model": model,
        "cluster": source,
        "turns": stats.turns,
        "turns_per_s": round(stats.turns / elapsed, 1) if elapsed > 0 else 0.0,
        "errors": sum(stats.errors.values()),
        "error_kinds": dict(stats.errors.most_common(5)),
        "reads": {
            "total": total_reads,
            "by_role": by_role,
            "by_role_reason": reads,
            "on_replicas_pct": round(100 * by_role.get("replica", 0) / total_reads, 1)
            if total_reads
            else 0.0,
            "by_host": {
                f"{h} ({roles.get(h, '?')})": n for h, n in rs.get("reads_by_host", {}).items()
            },
        },
        "writes": rs.get("writes"),
        "retries": rs.get("retries", {}),
        "failovers": rs.get("failovers", 0),
        "latency": {k: _lat(v) for k, v in stats.latencies.items()},
        "usage": {
            "workload": mine,
            "usage_logs": db_usage,
            "match": all(mine[k] == db_usage[k] for k in USAGE_KEYS),
        },
        "hosts": [
            {
                "host": h.host,
                "role": h.role,
                "up": h.up,
                "eligible": h.eligible,
                "lag_bytes": h.lag_bytes,
                "lag_seconds": h.lag_seconds,
            }
            for h in router.topology().hosts
        ],
        "metrics_url": f"{metrics_url}/metrics" if metrics_url else None,
        "shards": placement(router, session_ids),
    }


def format_summary(s: dict[str, Any]) -> str:
    r, lat, u = s["reads"], s["latency"], s["usage"]
    stop = " (interrupted)" if s["interrupted"] else ""
    reasons = ", ".join(
        f"{role}/{reason} {n}"
        for role, rr in sorted(r["by_role_reason"].items())
        for reason, n in sorted(rr.items(), key=lambda kv: -kv[1])
    )

    def ms(name: str) -> str:
        d = lat.get(name) or {}
        return f"{name} p50 {d.get('p50_ms')}ms p99 {d.get('p99_ms')}ms"

    db = u["usage_logs"]
    lines = [
        "",
        f"== pgsessions demo: {s['sessions']} conversations, {s['duration_s']:.1f}s{stop}, "
        f"model {s['model']}, {s['cluster']}",
        f"turns      {s['turns']} ({s['turns_per_s']}/s), errors {s['errors']}, "
        f"retries {sum(sum(v.values()) for v in s['retries'].values())}, "
        f"failovers {s['failovers']}",
        f"reads      {r['total']}: {r['on_replicas_pct']}% on replicas ({reasons or 'none'})",
        f"by host    {', '.join(f'{h} {n}' for h, n in r['by_host'].items()) or '-'}",
        f"writes     {s['writes']} "
        + ("(each on its shard's primary)" if s.get("shards") else "(all on the primary)"),
        f"latency    {ms('get_items')}; {ms('add_items')}; {ms('turn')}",
        f"usage_logs {db['runs']} runs, {db['requests']} requests, {db['input_tokens']} input + "
        f"{db['output_tokens']} output = {db['total_tokens']} tokens "
        + ("(matches the workload's own count)" if u["match"] else f"(MISMATCH: {u['workload']})"),
    ]
    if s.get("shards"):
        lines.append(format_placement(s["shards"]))
    if s["error_kinds"]:
        lines.append("errors     " + "; ".join(f"{n}x {e}" for e, n in s["error_kinds"].items()))
    if s["metrics_url"]:
        lines.append(f"metrics    {s['metrics_url']} (served while the demo ran)")
    return "\n".join(lines)
