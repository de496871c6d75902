"""``--plot``: a timeline per scenario (matplotlib, the optional ``plot`` extra)."""

from __future__ import annotations

import importlib
from typing import Any

MISSING = "--plot needs matplotlib: pip install 'pgsessions[plot]' (or pip install matplotlib)"
_EVENT_COLORS = {
    "fault": "red",
    "promoted": "green",
    "healed": "blue",
    "cut": "orange",
    "role": "purple",
}


def plot_reports(reports: list[dict[str, Any]], path: str) -> None:
    """One row per scenario: writes ok/failed per 100 ms, reads by role, lag per replica."""
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        raise RuntimeError(MISSING) from None

    fig, axes = plt.subplots(
        len(reports), 3, figsize=(19, 3.2 * len(reports)), squeeze=False, sharex="row"
    )
    for row, r in zip(axes, reports, strict=True):
        tl = r["timeline"]
        step = tl["bin_s"]
        xs = [i * step for i in range(len(tl["writes_ok"]))]
        ax_w, ax_r, ax_l = row
        ax_w.plot(xs, tl["writes_ok"], label="ok", color="tab:green")
        ax_w.plot(xs, tl["writes_failed"], label="failed", color="tab:red")
        ax_w.set_title(f"{r['scenario']} ({'PASS' if r['passed'] else 'FAIL'}): writes / 100 ms")
        for role, series in sorted(tl["reads"].items()):
            ax_r.plot(xs[: len(series)], series, label=role)
        ax_r.set_title("reads / 100 ms by role")
        for node, points in sorted(tl["lag_bytes"].items()):
            ax_l.plot([p[0] for p in points], [p[1] / 1024 for p in points], label=node)
        ax_l.set_title("replay lag (KiB) per replica")
        for ax in row:
            labelled: set[str] = set()
            for e in tl["events"]:
                kind = e["kind"]
                # one legend entry per kind: the dashed lines say what happened when
                label = _event_label(kind) if kind not in labelled else None
                labelled.add(kind)
                color = _EVENT_COLORS.get(kind, "grey")
                ax.axvline(e["t"], color=color, linestyle="--", linewidth=0.8, label=label)
            ax.set_xlabel("seconds since the workload started")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
        for e in tl["events"]:
            if e["kind"] in ("fault", "promoted", "healed", "role"):
                ax_w.annotate(
                    str(e.get("detail", e["kind"]))[:40],
                    (e["t"], 1.0),
                    xycoords=("data", "axes fraction"),
                    rotation=90,
                    fontsize="xx-small",
                    va="top",
                    ha="right",
                    color=_EVENT_COLORS.get(e["kind"], "grey"),
                )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _event_label(kind: str) -> str:
    return {
        "fault": "fault injected",
        "promoted": "promotion",
        "healed": "fault healed",
        "role": "role change (router)",
    }.get(kind, f"router: {kind}")
