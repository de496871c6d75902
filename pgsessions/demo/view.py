"""The live view: one frame a second (a redrawn panel on a terminal, plain lines otherwise)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, TextIO

from .stats import DemoStats, percentile

if TYPE_CHECKING:
    from ..router.protocol import Router


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f}ms"


def _lag(h: Any) -> str:
    if h.lag_bytes is None:
        return "lag ?"
    secs = f" {h.lag_seconds:.2f}s" if h.lag_seconds else ""
    return f"lag {max(h.lag_bytes, 0) / 1024:.0f}KiB{secs}"


def router_stats(router: Router) -> dict[str, Any]:
    """The router's counters; over shards, every shard's added up."""
    stats = getattr(router, "stats", None)
    out: dict[str, Any] = stats() if callable(stats) else {}
    if isinstance(out.get("shards"), dict):
        from .shards import merged_stats

        return merged_stats(out["shards"])
    return out


class LiveView:
    """Renders :class:`DemoStats` and the router's view to ``out``."""

    def __init__(self, out: TextIO, *, tty: bool, duration: float | None = None) -> None:
        self.out = out
        self.tty = tty
        self.duration = duration
        self._prev_reads: dict[str, int] = {}

    def frame(self, stats: DemoStats, router: Router, metrics_url: str | None) -> None:
        elapsed = time.monotonic() - stats.started
        rs = router_stats(router)
        reads: dict[str, dict[str, int]] = rs.get("reads", {})
        flat = {f"{role}/{reason}": n for role, rr in reads.items() for reason, n in rr.items()}
        delta = {k: n - self._prev_reads.get(k, 0) for k, n in flat.items()}
        self._prev_reads = flat
        g, a = stats.window("get_items"), stats.window("add_items")
        retries = sum(sum(v.values()) for v in rs.get("retries", {}).values())
        errors = sum(stats.errors.values())
        topo = router.topology()
        if self.tty:
            self._panel(stats, elapsed, flat, delta, g, a, retries, errors, topo, metrics_url)
        else:
            # reads in the last second by role/reason (only those that happened)
            shown = " ".join(f"{k} {n}" for k, n in sorted(delta.items()) if n) or "0"
            hosts = " ".join(
                f"{h.host}={h.role[0]}"
                + (
                    ""
                    if h.role != "replica"
                    else f"{'+' if h.eligible else '-'}({_lag(h).removeprefix('lag ')})"
                )
                for h in topo.hosts
            )
            self.out.write(
                f"[{elapsed:5.1f}s] turns/s {stats.turns_per_second():.0f} (total {stats.turns})"
                f" | reads/s {shown}"
                f" | get_items p50 {_ms(percentile(g, 0.5))} p99 {_ms(percentile(g, 0.99))}"
                f" | add_items p50 {_ms(percentile(a, 0.5))} p99 {_ms(percentile(a, 0.99))}"
                f" | errors {errors} retries {retries} | {hosts}\n"
            )
        self.out.flush()

    def _panel(
        self,
        stats: DemoStats,
        elapsed: float,
        flat: dict[str, int],
        delta: dict[str, int],
        g: list[float],
        a: list[float],
        retries: int,
        errors: int,
        topo: Any,
        metrics_url: str | None,
    ) -> None:
        left = f" / {self.duration:.0f}s" if self.duration else ""
        lines = [
            f"pgsessions demo  {elapsed:5.1f}s{left}   Ctrl-C stops"
            + (f"   metrics: {metrics_url}/metrics" if metrics_url else ""),
            "",
            f"turns/s {stats.turns_per_second():6.1f}   turns {stats.turns:7d}   "
            f"errors {errors}   retries {retries}",
            f"get_items p50 {_ms(percentile(g, 0.5)):>9} p99 {_ms(percentile(g, 0.99)):>9}   "
            f"add_items p50 {_ms(percentile(a, 0.5)):>9} p99 {_ms(percentile(a, 0.99)):>9}",
            "",
            "reads by role/reason      last 1s     total",
        ]
        for key in sorted(flat):
            lines.append(f"  {key:<22} {delta.get(key, 0):8d} {flat[key]:9d}")
        lines += ["", "hosts"]
        for h in topo.hosts:
            state = "up" if h.up else "DOWN"
            extra = ""
            if h.role == "replica":
                extra = f"  {'eligible' if h.eligible else 'NOT eligible':<12}  {_lag(h)}"
            lines.append(f"  {h.host:<22} {h.role:<8} {state:<4}{extra}")
        if stats.errors:
            lines += ["", "errors"]
            lines += [f"  {n:5d}  {e}" for e, n in stats.errors.most_common(3)]
        self.out.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")
