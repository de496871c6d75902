"""The drill report as text."""

from __future__ import annotations

from typing import Any

from .patroni_deploy import patroni_lines


def _s(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f}ms" if v < 1 else f"{v:.2f}s"


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])) or "none"


def format_scenario(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"== {r['scenario']} ({r['mode']}) FAIL\n  FAILED     {r['failures'][0]}"
    t = r["timings"]
    w, rd = r["writes"], r["reads"]
    verdict = "PASS" if r["passed"] else "FAIL"
    over = f" over {len(r['shards'])} shards" if r.get("shards") else ""
    lines = [
        f"== {r['scenario']} ({r['mode']}) {verdict}  "
        f"[{r['sessions']} sessions{over}, {r['duration_s']:.1f}s, verified on {r['verified_on']}]"
    ]
    fault = next((e for e in r["events"] if e["kind"] == "fault"), None)
    if fault:
        lines.append(f"  fault      +{fault['t']:.2f}s {fault['detail']}")
    lines.append(f"  detect     {_s(t['detect_s'])}  ({t['detected_by'] or 'no router signal'})")
    if t["promoted_at_s"] is not None:
        lines.append(
            f"  promotion  +{t['promoted_at_s']:.2f}s; first write "
            f"{_s(t['promotion_to_first_write_s'])} later"
        )
    if t["healed_at_s"] is not None:
        lines.append(
            f"  healed     +{t['healed_at_s']:.2f}s; first write "
            f"{_s(t['heal_to_first_write_s'])} later"
        )
    lines.append(
        f"  writes     longest gap without an acknowledged write {_s(t['longest_write_gap_s'])}"
    )
    lines.append(
        f"             {w['acknowledged']} acknowledged, {w['failed']} failed, "
        f"{w['waited']} waited > 0.5s (max {w['max_wait_s']:.2f}s), "
        f"{w['applied_but_unacknowledged']} applied but not acknowledged"
    )
    if w["failed_errors"]:
        lines.append(f"             failures: {_counts(w['failed_errors'])}")
    lines.append(
        f"  reads      {rd['ok']} ok, {rd['failed']} failed; by host: {_counts(rd['by_host'])}"
    )
    lo, hi = r["outage_window_s"]
    lines.append(
        f"             during the outage (+{lo:.2f}s..+{hi:.2f}s): {_counts(rd['during_outage'])}"
        f"; failed {rd['failed_during_outage']}"
    )
    lines.append(
        f"  data       lost {r['lost']}, duplicated {r['duplicated']}, "
        f"reordered {r['reordered']}, torn {r['torn']}, stale reads {r['stale_reads']}"
    )
    lines.extend(shard_lines(r))
    if r["loss_explanation"]:
        lines.append(f"  loss       {r['loss_explanation']}")
    for ex in r["stale_examples"][:3]:
        lines.append(
            f"  stale      {ex['session']} at +{ex['at_s']:.2f}s expected batch "
            f"{ex['expected_batch']}, read up to {ex['newest_read']} from {ex['served_by']}"
        )
    if "patroni" in r:
        lines.extend(patroni_lines(r["patroni"]))
    for warning in r.get("warnings", []):
        lines.append(f"  warning    {warning}")
    for f in r["failures"]:
        lines.append(f"  FAILED     {f}")
    return "\n".join(lines)


def format_summary(reports: list[dict[str, Any]]) -> str:
    passed = sum(1 for r in reports if r["passed"])
    patroni = any("patroni" in r for r in reports)
    head = ["scenario", "result", "detect", "promo->write", "lost", "dup", "stale"]
    rows = [(*head, "reads in outage", *(("fault->promo", "fault->write") if patroni else ()))]
    for r in reports:
        if "error" in r:
            rows.append((r["scenario"], "FAIL", *["-"] * (len(rows[0]) - 2)))
            continue
        t = r["timings"]
        p = r.get("patroni", {})
        rows.append(
            (
                r["scenario"],
                "PASS" if r["passed"] else "FAIL",
                _s(t["detect_s"]),
                _s(t["promotion_to_first_write_s"]),
                str(r["lost"]),
                str(r["duplicated"]),
                str(r["stale_reads"]),
                str(sum(r["reads"]["during_outage"].values())),
                *(
                    (_s(p.get("fault_to_promotion_s")), _s(p.get("fault_to_first_write_s")))
                    if patroni
                    else ()
                ),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = ["  ".join(c.ljust(wd) for c, wd in zip(row, widths, strict=True)) for row in rows]
    verdict = "all invariants held" if passed == len(reports) else "INVARIANTS VIOLATED"
    return "\n".join([*table, f"{passed}/{len(reports)} scenarios passed: {verdict}"])


def shard_lines(r: dict[str, Any]) -> list[str]:
    """The per-shard lines of a sharded scenario's text report."""
    lines = []
    for name, s in r.get("shards", {}).items():
        role = "faulted" if s["faulted"] else "untouched"
        lines.append(
            f"  shard {name:<4} {role:<9} {s['sessions']} sessions: writes "
            f"{s['writes_acknowledged']} ok, {s['writes_failed']} failed "
            f"(longest gap {s['longest_write_gap_s'] * 1000:.0f}ms); reads {s['reads_ok']} ok, "
            f"{s['reads_failed']} failed; lost {s['lost']}, duplicated {s['duplicated']}, "
            f"stale {s['stale_reads']}"
        )
    if "misplaced_items" in r:
        lines.append(
            f"  placement  items stored on a shard not owning them: {r['misplaced_items']}"
        )
    return lines
