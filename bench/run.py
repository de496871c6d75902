"""One benchmark run: open the contenders, run the workloads, check, report as a dict."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from .contenders import BenchEnv, Contender, default_contenders
from .harness import NO_SESSION, Bench, BenchConfig, Cell, Log
from .report import HEADLINE, add_ratios, machine_info, targets
from .servercpu import replicas_cpu_probe, server_cpu_probe
from .threads import threads_workload
from .wal import measure_wal


def _block(param: int, label: str, cells: dict[str, Cell]) -> dict[str, Any]:
    block = {"param": param, "label": label, "cells": [c.as_dict() for c in cells.values()]}
    add_ratios(block)
    return block


async def run_bench(
    env: BenchEnv,
    config: BenchConfig,
    contenders: Sequence[Contender] | None = None,
    *,
    log: Log = print,
    keep: bool = False,
) -> dict[str, Any]:
    """Run ``config`` over ``contenders`` (default: the five of issue 7) on ``env``.

    Returns a JSON-ready dict: date, machine, config, contenders (status and reasons),
    workloads (blocks of cells with medians and ratios vs pgsessions-routed), targets.
    Contenders that cannot run here are reported as skipped; tables are dropped unless
    ``keep``.
    """
    contenders = list(contenders) if contenders is not None else default_contenders()
    date = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    machine = await machine_info(env.primary_dsn, env.replica_dsns)
    status: dict[str, dict[str, Any]] = {}
    active: list[Contender] = []
    opened: list[Contender] = []
    for c in contenders:
        status[c.name] = {"name": c.name, "description": c.description, "reasons": []}
        why = c.unavailable()
        if why:
            status[c.name].update(status="skipped", reasons=[why])
            log(f"skipping {c.name}: {why}")
            continue
        opened.append(c)
        try:
            await c.open(env)
        except Exception as exc:
            status[c.name].update(status="failed", reasons=[f"open: {type(exc).__name__}: {exc}"])
            log(f"{c.name} failed to open: {exc!r}")
            continue
        active.append(c)

    workloads: dict[str, list[dict[str, Any]]] = {}
    wal: dict[str, Any] | None = None
    bench = Bench(env, active, config, log)
    bench.primary_cpu = await server_cpu_probe(env.primary_dsn)
    bench.replicas_cpu = await replicas_cpu_probe(env.replica_dsns)
    try:
        for w in config.workloads:
            log(f"{w}:")
            if w == "wal":
                pgs = next((c for c in active if c.name == HEADLINE), None)
                if pgs is not None:
                    wal = await measure_wal(env, pgs.session, adds=config.wal_adds)
                    log(
                        f"  WAL bytes per add: pgsessions {wal['pgsessions_bytes_per_add']:.0f},"
                        f" floor statement {wal['floor_bytes_per_add']:.0f}"
                    )
                continue
            blocks = workloads.setdefault(w, [])
            if w == "turn":
                for n in config.turn_sessions:
                    label = f"{n} concurrent sessions; add_items(user + assistant) + get_items"
                    blocks.append(_block(n, label, await bench.turn(n)))
            elif w == "adds":
                n = config.turn_sessions[0]
                label = f"{n} concurrent sessions; add_items(user + assistant) alone"
                blocks.append(_block(n, label, await bench.adds(n, bench.primary_cpu)))
            elif w == "read-heavy":
                n = config.read_heavy_sessions
                label = f"{n} sessions; {config.reads_per_write} get_items per add_items"
                blocks.append(_block(n, label, await bench.read_heavy(n)))
            elif w == "history":
                await bench.seed_history()
                by_size = await bench.history(config.history_sizes)
                for size in config.history_sizes:
                    label = (
                        f"get_items(limit) on a {size:,}-item session, "
                        f"{config.history_readers} concurrent readers"
                    )
                    blocks.append(_block(size, label, by_size[size]))
            elif w == "runner":
                n = config.runner_sessions
                label = f"{n} sessions; Runner.run with a scripted model, tracing off"
                blocks.append(_block(n, label, await bench.runner(n)))
            elif w == "threads":
                n = config.runner_sessions
                label = (
                    f"{n} conversations; Runner.run in {n} tasks on the router's loop vs "
                    f"Runner.run_sync in {n} threads on SessionRouter.start"
                )
                blocks.append(_block(n, label, await threads_workload(bench, n)))
            elif w == "agent":
                n = config.agent_sessions
                low, high = config.agent_pause
                label = (
                    f"{n} sessions; get_items + add_items, then a {low:g}-{high:g} s pause "
                    "(a model call) before the session's next read"
                )
                blocks.append(_block(n, label, await bench.agent(n, bench.primary_cpu)))
            else:
                raise ValueError(f"unknown workload {w!r}")
        log("checking every conversation's full history ...")
        await bench.verify_histories()
    finally:
        machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
        for c in opened:
            try:
                await c.close()
                if not keep:
                    await c.drop()
            except Exception as exc:  # report, but do not hide the run's results
                log(f"{c.name}: cleanup failed: {exc!r}")

    for c in active:
        reasons = list(bench.guard[c.name])
        for blocks in workloads.values():
            for b in blocks:
                for cell in b["cells"]:
                    if cell["contender"] == c.name and not cell["ok"]:
                        reasons += [f"{b['label']}: {p}" for p in cell["problems"][:2]]
                        if not cell["problems"]:
                            reasons.append(f"{b['label']}: {cell['errors']} errors")
        status[c.name].update(status="failed" if reasons else "ok", reasons=reasons[:6])

    results: dict[str, Any] = {
        "date": date,
        "machine": machine,
        "config": {**asdict(config), "pool_size": env.pool_size},
        "contenders": list(status.values()),
        "workloads": workloads,
    }
    if wal is not None:
        results["wal"] = wal
    runner_blocks = workloads.get("runner", [])
    if runner_blocks:
        cells = {c["contender"]: c for c in runner_blocks[0]["cells"]}
        base = cells.get(NO_SESSION)
        if base and base["ops_per_s"] > 0:
            results["runner_session_share"] = {
                n: round(1 - c["ops_per_s"] / base["ops_per_s"], 3)
                for n, c in cells.items()
                if n != NO_SESSION
            }
    results["targets"] = targets(results)
    return results
