"""Machine description, ratios, targets, and the terminal / Markdown renderings of a run."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any

import psycopg

HEADLINE = "pgsessions-routed"
FLOOR = "raw-floor"
SQLALCHEMY = "sqlalchemy"

PRIMARY_ONLY = "pgsessions-primary"

UNITS = {
    "turn": "turns/s",
    "history": "reads/s",
    "read-heavy": "ops/s",
    "runner": "runs/s",
    "threads": "turns/s",
    "agent": "turns/s",
    "adds": "adds/s",
}
#: the routed contender with coalescing off, if run (`make bench` runs it:
#: `--variant coalesce_writes=false,coalesce_reads=false`)
NO_COALESCING = "pgsessions-routed[coalesce_writes=false,coalesce_reads=false]"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) // 1024 // 1024} GiB"
    except OSError:
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


async def machine_info(primary_dsn: str, replica_dsns: list[str]) -> dict[str, Any]:
    """Cores, load, versions, and the PostgreSQL settings that decide commit cost."""
    pg: dict[str, Any] = {}
    async with await psycopg.AsyncConnection.connect(primary_dsn, autocommit=True) as conn:
        for name in (
            "server_version",
            "fsync",
            "synchronous_commit",
            "synchronous_standby_names",
            "wal_level",
            "shared_buffers",
            "max_connections",
        ):
            cur = await conn.execute(f"SHOW {name}")
            row = await cur.fetchone()
            pg[name] = row[0] if row else None
        cur = await conn.execute(
            "SELECT application_name, sync_state FROM pg_stat_replication ORDER BY 1"
        )
        pg["replication"] = [f"{a}: {s}" for a, s in await cur.fetchall()]
    pg["replicas_configured"] = len(replica_dsns)
    mem = _memory()
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory": mem,
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "postgresql": pg,
        "packages": {
            d: _version(d)
            for d in ("psycopg", "psycopg-pool", "openai-agents", "sqlalchemy", "asyncpg")
        },
        "pgsessions_commit": _git_commit(),
    }


# ------------------------------------------------------------------------------ ratios/targets
def cell(results: dict[str, Any], workload: str, param: Any, name: str) -> dict[str, Any] | None:
    for block in results.get("workloads", {}).get(workload, []):
        if block["param"] == param:
            for c in block["cells"]:
                if c["contender"] == name:
                    return c  # type: ignore[no-any-return]
    return None


def round_ratios(a: dict[str, Any], b: dict[str, Any], metric: str) -> list[float]:
    """a's metric / b's metric in each round where both have it."""
    return [
        x[metric] / y[metric]
        for x, y in zip(a["rounds"], b["rounds"], strict=False)
        if x.get(metric) is not None and y.get(metric)
    ]


def paired_ratio(a: dict[str, Any], b: dict[str, Any], metric: str) -> float | None:
    """Median over rounds of a's metric / b's metric in the same round.

    Cells of one round run back to back, so pairing them cancels most of the drift of a
    shared, noisy machine; the median then drops the rounds a burst of noise hit.
    """
    ratios = round_ratios(a, b, metric)
    return round(float(statistics.median(ratios)), 3) if ratios else None


def add_ratios(block: dict[str, Any]) -> None:
    """Each cell's throughput and p99 relative to pgsessions-routed (contender / routed)."""
    base = next((c for c in block["cells"] if c["contender"] == HEADLINE), None)
    for c in block["cells"]:
        c["tput_vs_routed"] = paired_ratio(c, base, "ops_per_s") if base else None
        c["p99_vs_routed"] = paired_ratio(c, base, "p99_ms") if base else None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, evaluated on this run (reported, never asserted)."""
    out: list[dict[str, Any]] = []
    blocks = results.get("workloads", {}).get("turn", [])
    headline = blocks[0]["param"] if blocks else None

    def add(
        name: str,
        op: str,
        bound: float,
        value: float | None = None,
        pair: tuple[dict[str, Any] | None, dict[str, Any] | None, str] | None = None,
    ) -> None:
        """A target whose value is given, or is the paired ratio ``a / b`` of ``metric``."""
        target: dict[str, Any] = {"target": name}
        if pair is not None:
            a, b, metric = pair
            ratios = round_ratios(a, b, metric) if a and b else []
            value = float(statistics.median(ratios)) if ratios else None
            if len(ratios) > 1:
                # the spread of the per-round ratios: how far one round's noise moves the value
                target["rounds"] = [round(min(ratios), 3), round(max(ratios), 3)]
        met = None if value is None else (value >= bound if op == ">=" else value <= bound)
        target.update(
            value=None if value is None else round(value, 3), bound=f"{op} {bound}", met=met
        )
        out.append(target)

    wal = results.get("wal")
    if wal is not None:
        add("WAL bytes per add_items / the floor's statement", "<=", 1.10, wal.get("ratio"))
    if headline is not None:
        r = cell(results, "turn", headline, HEADLINE)
        f = cell(results, "turn", headline, FLOOR)
        s = cell(results, "turn", headline, SQLALCHEMY)
        turn = f"turn x{headline}: routed"
        add(
            f"{turn} client CPU per turn / raw floor",
            "<=",
            1.25,
            pair=(r, f, "client_cpu_us_per_op"),
        )
        add(f"{turn} turns/s / raw floor", ">=", 1.2, pair=(r, f, "ops_per_s"))
        add(f"{turn} turns/s / SQLAlchemySession", ">=", 2.5, pair=(r, s, "ops_per_s"))
        add(f"{turn} p99 / raw floor p99", "<=", 1.5, pair=(r, f, "p99_ms"))
    adds = results.get("workloads", {}).get("adds", [])
    if adds:
        n = adds[0]["param"]
        r, f = cell(results, "adds", n, HEADLINE), cell(results, "adds", n, FLOOR)
        name = f"adds x{n}: routed"
        cpu = (r, f, "primary_cpu_s_per_1000")
        add(f"{name} primary CPU per add_items / raw floor", "<=", 0.7, pair=cpu)
        add(
            f"{name} WAL bytes per add_items / raw floor",
            "<=",
            1.0,
            pair=(r, f, "wal_bytes_per_op"),
        )
    alone = cell(results, "turn", 1, HEADLINE)
    off = cell(results, "turn", 1, NO_COALESCING)
    if alone is not None and off is not None:
        name = "turn x1: routed p50 / routed with coalescing off"
        add(name, "<=", 1.05, pair=(alone, off, "p50_ms"))
    threads = results.get("workloads", {}).get("threads", [])
    if threads:
        n = threads[0]["param"]
        t, k = cell(results, "threads", n, "threads"), cell(results, "threads", n, "tasks")
        name = f"threads x{n}: run_sync client CPU per turn / tasks on one loop"
        add(name, "<=", 1.3, pair=(t, k, "client_cpu_us_per_op"))
    agent = results.get("workloads", {}).get("agent", [])
    if agent:
        n = agent[0]["param"]
        r = cell(results, "agent", n, HEADLINE)
        p = cell(results, "agent", n, PRIMARY_ONLY)
        cpu = (r, p, "primary_cpu_s_per_1000")
        add(f"agent x{n}: routed primary CPU per turn / primary-only", "<=", 0.6, pair=cpu)
        share = r.get("replica_read_share") if r else None
        add(f"agent x{n}: share of routed reads served by replicas", ">=", 0.95, share)
    hist = results.get("workloads", {}).get("history", [])
    if len(hist) >= 2:
        small, big = hist[0]["param"], hist[-1]["param"]
        a = cell(results, "history", small, HEADLINE)
        b = cell(results, "history", big, HEADLINE)
        add(
            f"history: routed p50 at {big:,} / at {small:,} items", "<=", 1.2, pair=(b, a, "p50_ms")
        )
    return out


def history_ratios(results: dict[str, Any]) -> dict[str, float | None]:
    """Per contender: p50 at the biggest history / p50 at the smallest."""
    hist = results.get("workloads", {}).get("history", [])
    if len(hist) < 2:
        return {}
    out: dict[str, float | None] = {}
    for c in hist[0]["cells"]:
        big = cell(results, "history", hist[-1]["param"], c["contender"])
        out[c["contender"]] = paired_ratio(big, c, "p50_ms") if big else None
    return out


# ------------------------------------------------------------------------------ rendering
def _fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _rows(
    block: dict[str, Any], statuses: dict[str, str], agent: bool = False, adds: bool = False
) -> list[list[str]]:
    rows = []
    for c in block["cells"]:
        status = "ok" if c["ok"] else "FAILED"
        if statuses.get(c["contender"], "ok") != "ok" and c["ok"]:
            status = "FAILED (guard)"
        rows.append(
            [
                c["contender"],
                f"{c['ops_per_s']:,.0f}",
                _fmt_ratio(c.get("tput_vs_routed")),
                f"{c['p50_ms']:.2f}",
                f"{c['p99_ms']:.2f}",
                _fmt_ratio(c.get("p99_vs_routed")),
                f"{c.get('client_cpu_us_per_op', 0):,.0f}",
                *(_agent_columns(c) if agent else []),
                *(_adds_columns(c) if adds else []),
                status,
            ]
        )
    return rows


def _agent_columns(c: dict[str, Any]) -> list[str]:
    cpu = c.get("primary_cpu_s_per_1000")
    return [f"{c.get('replica_read_share', 0):.0%}", "-" if cpu is None else f"{cpu:.2f}"]


def _adds_columns(c: dict[str, Any]) -> list[str]:
    cpu, wal = c.get("primary_cpu_s_per_1000"), c.get("wal_bytes_per_op")
    return ["-" if cpu is None else f"{cpu:.2f}", "-" if wal is None else f"{wal:,.0f}"]


def _routing_lines(block: dict[str, Any]) -> list[str]:
    lines = []
    for c in block["cells"]:
        routed = c.get("reads_routed") or {}
        total = sum(routed.values())
        if total:
            parts = ", ".join(
                f"{k} {v / total:.0%}" for k, v in sorted(routed.items(), key=lambda kv: -kv[1])
            )
            lines.append(f"reads of {c['contender']} (role/reason): {parts}")
    return lines


def cpu_profile_lines(block: dict[str, Any], cores: int | None) -> list[str]:
    """Where a turn's CPU went, per contender: this process (client), the primary's
    processes and the replicas' (medians of rounds, us per operation), their sum, and how
    many of the machine's cores that sum kept busy at the contender's rate."""
    lines = []
    for c in block["cells"]:
        primary, replicas = c.get("primary_cpu_s_per_1000"), c.get("replicas_cpu_s_per_1000")
        if primary is None or replicas is None:
            continue
        client = c.get("client_cpu_us_per_op", 0.0)
        total = client + 1000 * (primary + replicas)
        busy = total * c["ops_per_s"] / 1e6
        of = f" of {cores}" if cores else ""
        lines.append(
            f"CPU per op of {c['contender']}: client {client:,.0f} us, primary "
            f"{1000 * primary:,.0f} us, replicas {1000 * replicas:,.0f} us, total {total:,.0f} us"
            f" ({busy:.2f}{of} cores busy)"
        )
    return lines


def wal_record_lines(block: dict[str, Any], top: int = 8) -> list[str]:
    """WAL per operation by record type (pg_waldump, the last round), the record types
    that differ most between the contenders first."""
    by = {c["contender"]: c["wal_records"] for c in block["cells"] if c.get("wal_records")}
    if not by:
        return []
    kinds = {k for recs in by.values() for k in recs}

    def spread(kind: str) -> float:
        sizes = [float(recs.get(kind, {}).get("bytes", 0.0)) for recs in by.values()]
        return max(sizes) - min(sizes) if len(sizes) > 1 else max(sizes)

    lines = ["WAL bytes per op by record type, last round (records per op in parentheses):"]
    for kind in sorted(kinds, key=spread, reverse=True)[:top]:
        parts = []
        for name, recs in by.items():
            r = recs.get(kind)
            parts.append(f"{name} {r['bytes']:,.0f} ({r['records']:.2f})" if r else f"{name} -")
        lines.append(f"  {kind}: " + ", ".join(parts))
    return lines


def _profile_lines(workload: str, block: dict[str, Any], results: dict[str, Any]) -> list[str]:
    cores = results.get("machine", {}).get("cpu_count")
    return cpu_profile_lines(block, cores) + (wal_record_lines(block) if workload == "adds" else [])


def _statuses(results: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in results.get("contenders", [])}


def _header(unit: str, agent: bool = False, adds: bool = False) -> list[str]:
    return [
        "contender",
        unit,
        "vs routed",
        "p50 ms",
        "p99 ms",
        "p99 vs routed",
        "client CPU us/op",
        *(["reads on replicas", "primary CPU s/1000 turns"] if agent else []),
        *(["primary CPU s/1000 adds", "WAL bytes/add"] if adds else []),
        "check",
    ]


def _table_args(workload: str, b: dict[str, Any], statuses: dict[str, str]) -> Any:
    agent, adds = workload == "agent", workload == "adds"
    return _header(UNITS[workload], agent, adds), _rows(b, statuses, agent, adds)


def _wal_lines(results: dict[str, Any]) -> list[str]:
    wal = results.get("wal")
    if not wal:
        return []
    return [
        f"WAL bytes per add_items (user + ~1 KB assistant message, {wal['adds_per_round']} adds "
        f"on {wal['sessions']} conversations per round, median of {len(wal['rounds'])} rounds): "
        f"pgsessions {wal['pgsessions_bytes_per_add']:,.0f}, one hand-written statement "
        f"(conversation upsert + message insert) {wal['floor_bytes_per_add']:,.0f}, "
        f"ratio {wal['ratio']:.2f}x",
    ]


def _machine_lines(results: dict[str, Any]) -> list[str]:
    m = results.get("machine", {})
    pg = m.get("postgresql", {})
    cfg = results.get("config", {})
    return [
        f"date: {results.get('date')}  commit: {m.get('pgsessions_commit')}",
        f"machine: {m.get('cpu_count')} cores ({m.get('cpu_model')}), {m.get('memory')}, "
        f"load avg at start {m.get('load_avg_start')}, at end {m.get('load_avg_end')}",
        f"python {m.get('python')}; "
        + ", ".join(f"{k} {v}" for k, v in m.get("packages", {}).items() if v),
        f"PostgreSQL {pg.get('server_version')}: fsync={pg.get('fsync')}, "
        f"synchronous_commit={pg.get('synchronous_commit')}, "
        f"synchronous_standby_names='{pg.get('synchronous_standby_names')}', "
        f"shared_buffers={pg.get('shared_buffers')}, replicas: "
        f"{', '.join(pg.get('replication', [])) or 'none'}",
        f"run: {cfg.get('rounds')} interleaved rounds x {cfg.get('duration')} s per cell "
        f"(history: half), warm-up {cfg.get('warmup')} s, pool {cfg.get('pool_size')} "
        f"connections per host, get_items(limit={cfg.get('limit')}); values are medians of "
        "rounds, ratios medians of per-round ratios (cells of a round run back to back)",
    ]


def _table_text(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for k, r in enumerate([header, *rows]):
        cells = [r[0].ljust(widths[0])] + [r[i].rjust(widths[i]) for i in range(1, len(r))]
        lines.append("  ".join(cells))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _table_md(header: list[str], rows: list[list[str]]) -> str:
    aligns = ["---"] + ["---:"] * (len(header) - 2) + ["---"]
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(aligns) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _blocks(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for workload, blocks in results.get("workloads", {}).items():
        for b in blocks:
            out.append((workload, b))
    return out


def _target_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for t in results.get("targets", []):
        met = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        value = "-" if t["value"] is None else f"{t['value']:.3f}"
        if t.get("rounds"):
            lo, hi = t["rounds"]
            value += f" (rounds {lo:.3f}-{hi:.3f})"
        lines.append(f"{t['target']}: {value} (target {t['bound']}): {met}")
    return lines


def _contender_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for c in results.get("contenders", []):
        why = "; ".join(c.get("reasons", []))
        lines.append(f"{c['name']}: {c['status']}" + (f" ({why})" if why else ""))
        lines.append(f"    {c['description']}")
    return lines


def render_text(results: dict[str, Any]) -> str:
    statuses = _statuses(results)
    parts = ["", *_machine_lines(results), ""]
    parts += _wal_lines(results) + ([""] if results.get("wal") else [])
    for workload, b in _blocks(results):
        parts.append(f"{workload}: {b['label']}")
        parts.append(_table_text(*_table_args(workload, b, statuses)))
        parts += _routing_lines(b)
        parts += _profile_lines(workload, b, results)
        parts.append("")
    share = results.get("runner_session_share")
    if share:
        parts.append(
            "session share of a Runner.run turn (1 - runs/s with session / runs/s without): "
            + ", ".join(f"{k} {v:.0%}" for k, v in share.items())
        )
    hr = history_ratios(results)
    if hr:
        parts.append(
            "history p50 ratio biggest/smallest: "
            + ", ".join(f"{k} {_fmt_ratio(v)}" for k, v in hr.items())
        )
    header, rows = summary_rows(results)
    if rows:
        parts += [
            "",
            "summary: value (paired ratio vs pgsessions-routed); history rows are p50 ms",
            _table_text(header, rows),
        ]
    parts += ["", "targets (pgsessions-routed):"]
    parts += ["  " + x for x in _target_lines(results)]
    parts += ["", "contenders:"] + ["  " + x for x in _contender_lines(results)]
    return "\n".join(parts) + "\n"


def summary_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per workload cell, one column per contender: value (ratio vs routed)."""
    names: list[str] = []
    for _, b in _blocks(results):
        for c in b["cells"]:
            if c["contender"] not in names:
                names.append(c["contender"])
    rows: list[list[str]] = []
    for workload, b in _blocks(results):
        cells = {c["contender"]: c for c in b["cells"]}
        if workload == "history":
            label, key, fmt = f"history {b['param']:,} items: p50 ms", "p50_ms", "{:.2f}"
        else:
            label, key, fmt = f"{workload} x{b['param']}: {UNITS[workload]}", "ops_per_s", "{:,.0f}"
        row = [label]
        for n in names:
            c = cells.get(n)
            if c is None:
                row.append("-")
                continue
            base = cells.get(HEADLINE)
            ratio = paired_ratio(c, base, key) if base else None
            flag = "" if c["ok"] else " FAILED"
            row.append(fmt.format(c[key]) + (f" ({ratio:.2f}x)" if ratio else "") + flag)
        rows.append(row)
        if workload == "turn" and b is results["workloads"]["turn"][0]:
            p99 = [f"turn x{b['param']}: p99 ms"]
            for n in names:
                c = cells.get(n)
                base = cells.get(HEADLINE)
                ratio = paired_ratio(c, base, "p99_ms") if c and base else None
                p99.append(
                    "-"
                    if c is None
                    else f"{c['p99_ms']:.1f}" + (f" ({ratio:.2f}x)" if ratio else "")
                )
            rows.append(p99)
    return ["workload", *names], rows


def summary_table_md(results: dict[str, Any]) -> str:
    header, rows = summary_rows(results)
    aligns = ["---"] + ["---:"] * (len(header) - 1)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(aligns) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def render_markdown(results: dict[str, Any]) -> str:
    statuses = _statuses(results)
    parts = [
        f"# Benchmark results ({results.get('date', '')[:10]})",
        "",
        "Produced by `pgsessions bench` (see bench/README.md for how to "
        "reproduce). "
        "Ratios are contender / pgsessions-routed within this one interleaved run; the "
        "machine is shared, so compare ratios, not absolute numbers across runs.",
        "",
    ]
    parts += ["- " + x for x in _machine_lines(results)]
    parts += [
        "",
        "## Summary",
        "",
        "Value (paired ratio vs pgsessions-routed); history rows are p50 latency, lower is "
        "better; all other rows are throughput, higher is better.",
        "",
        summary_table_md(results),
        "",
        "## Targets",
        "",
    ]
    parts += ["- " + x for x in _target_lines(results)] + [""]
    if results.get("wal"):
        parts += ["## wal", "", *_wal_lines(results), ""]
    for workload, b in _blocks(results):
        parts += [
            f"## {workload}: {b['label']}",
            "",
            _table_md(*_table_args(workload, b, statuses)),
            "",
        ]
        notes = _routing_lines(b) + _profile_lines(workload, b, results)
        if notes:
            parts += [("  - " if x.startswith("  ") else "- ") + x.strip() for x in notes] + [""]
    share = results.get("runner_session_share")
    if share:
        parts += [
            "Session share of a full `Runner.run` turn (1 - runs/s with the session / runs/s "
            "with no session): " + ", ".join(f"{k} {v:.0%}" for k, v in share.items()),
            "",
        ]
    hr = history_ratios(results)
    if hr:
        parts += [
            "History p50 ratio, biggest / smallest history: "
            + ", ".join(f"{k} {_fmt_ratio(v)}" for k, v in hr.items()),
            "",
        ]
    parts += ["## Contenders", ""] + ["- " + x.strip() for x in _contender_lines(results)]
    return "\n".join(parts) + "\n"
