"""The Patroni cluster a drill scenario runs on: its deployment, a watch of its REST API,
and the figures of the report: when Patroni promoted, when pgsessions wrote again.

Times are seconds on the ledger's clock. Patroni's promotion time comes from its ``/history``
(the new timeline's history file, written by PostgreSQL as it leaves recovery); the REST
API's view (``/cluster``, polled ten times a second) and the servers' own answers
(``pg_is_in_recovery()``, polled ten times a second) are given beside it.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..devcluster.patroni import PatroniCluster
from ..router import RouterConfig
from .ledger import Ledger

if TYPE_CHECKING:
    from .scenarios import DrillContext


def _r(v: float | None) -> float | None:
    return round(v, 3) if v is not None else None


def _since(t: float | None, t0: float) -> float | None:
    return _r(t - t0) if t is not None else None


def writable_windows(ledger: Ledger, first_primary: str | None) -> list[tuple[float, float]]:
    """Windows in which two or more members answered as writable primaries (from the
    sampler's ``role`` events; ``first_primary`` was the only one at the start)."""
    roles: dict[str, str] = {first_primary: "primary"} if first_primary else {}
    windows: list[tuple[float, float]] = []
    since: float | None = None
    for e in ledger.events:
        if e.kind != "role":
            continue
        name, _, change = e.detail.partition(": ")
        roles[name] = change.rsplit("-> ", 1)[-1]
        writable = sum(1 for r in roles.values() if r == "primary")
        if writable >= 2 and since is None:
            since = e.t
        elif writable < 2 and since is not None:
            windows.append((since, e.t))
            since = None
    if since is not None:
        windows.append((since, ledger.now()))
    return windows


def _history_promotion(
    dep: PatroniDeployment, ledger: Ledger
) -> tuple[float | None, int, str | None]:
    """(ledger time of the newest timeline switch after the fault, timeline, new leader)."""
    history = dep.cluster.history()
    if not history or int(history[-1][0]) + 1 <= dep.timeline_before:
        return None, dep.timeline_before, None
    row = history[-1]
    at: float | None = None
    if len(row) >= 4 and row[3]:
        at = datetime.fromisoformat(str(row[3])).timestamp() - ledger.wall0
    leader = str(row[4]) if len(row) >= 5 else None
    return at, int(row[0]) + 1, leader


def _rest_leader_back(dep: PatroniDeployment, t_fault: float) -> float | None:
    """When the REST API showed a running leader again after losing the old one."""
    if dep.watch is None:
        return None
    lost = False
    for s in dep.watch.samples:
        if s.t < t_fault:
            continue
        if s.leader != dep.leader_before:
            lost = True
        if lost and s.leader is not None:
            return s.t
    return None


def patroni_figures(dep: PatroniDeployment, ledger: Ledger, ctx: DrillContext) -> dict[str, Any]:
    """The report's ``patroni`` section (its ``failures`` list is moved to the report's)."""
    failures: list[str] = []
    fault = ledger.first_event("fault")
    t_fault = fault.t if fault else 0.0
    t_promo, timeline, promoted = _history_promotion(dep, ledger)
    writable = next(
        (
            e.t
            for e in ledger.events
            if e.kind == "role" and e.t >= t_fault and e.detail.endswith("-> primary")
        ),
        None,
    )
    demoted = next(
        (
            e.t
            for e in ledger.events
            if e.kind == "role"
            and e.t >= t_fault
            and e.detail.startswith(f"{dep.leader_before}: primary ->")
        ),
        None,
    )
    resume = t_promo if t_promo is not None else writable
    first_write = ledger.first_ack_after(resume) if resume is not None else None
    windows = writable_windows(ledger, dep.leader_before)
    double_acks = sum(
        1
        for w in ledger.writes
        if w.ok and w.end is not None and any(a <= w.end <= b for a, b in windows)
    )
    if double_acks:
        failures.append(
            f"{double_acks} writes acknowledged while two members accepted writes "
            f"({sum(b - a for a, b in windows):.2f}s in all)"
        )
    leader_after = dep.cluster.leader()
    out: dict[str, Any] = {
        "ttl": dep.cluster.ttl,
        "loop_wait": dep.cluster.loop_wait,
        "synchronous_mode": dep.cluster.sync,
        "router_reads_patroni": dep.rest,
        "leader_before": dep.leader_before,
        "leader_after": leader_after.name if leader_after else None,
        "timeline_before": dep.timeline_before,
        "timeline_after": timeline,
        "promoted": promoted,
        "fault_at_s": _r(t_fault),
        "promotion_at_s": _r(t_promo),
        "fault_to_promotion_s": _since(t_promo, t_fault),
        "fault_to_rest_leader_s": _since(_rest_leader_back(dep, t_fault), t_fault),
        "fault_to_writable_s": _since(writable, t_fault),
        "fault_to_demotion_s": _since(demoted, t_fault),
        "first_write_at_s": _r(first_write),
        "fault_to_first_write_s": _since(first_write, t_fault),
        "promotion_to_first_write_s": (
            _r(first_write - t_promo) if first_write is not None and t_promo is not None else None
        ),
        "two_writable_s": round(sum(b - a for a, b in windows), 3),
        "writes_acked_while_two_writable": double_acks,
        "failures": failures,
    }
    f = dep.figures
    if "rewound" in f:
        out["old_leader_rewound"] = f["rewound"]
    if "restart_at_s" in f:
        t_back = f.get("back_in_rotation_at_s")
        host = f.get("rejoined_host")
        out["rejoin"] = {
            "member": f.get("rejoined_member"),
            "restart_to_streaming_s": _since(f.get("rejoined_at_s"), f["restart_at_s"]),
            "restart_to_rotation_s": _since(t_back, f["restart_at_s"]),
            "reads_served_after": sum(
                1
                for r in ledger.reads
                if r.ok and host is not None and r.host == host and r.start > (t_back or 0)
            ),
        }
    if "etcd_back_at_s" in f:
        out["etcd_down_s"] = _since(f["etcd_back_at_s"], t_fault)
    return out


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}s"


def patroni_lines(p: dict[str, Any]) -> list[str]:
    """The Patroni lines of a scenario's text report."""
    mode = "synchronous_mode" if p["synchronous_mode"] else "asynchronous"
    leaders = f"{p['leader_before']} -> {p['leader_after'] or '?'}"
    tls = f"timeline {p['timeline_before']} -> {p['timeline_after']}"
    rest = "; router reads /cluster" if p.get("router_reads_patroni") else ""
    lines = [
        f"  patroni    {mode}, ttl {p['ttl']}, loop_wait {p['loop_wait']}{rest}; {leaders}, {tls}"
    ]
    if p["promoted"]:
        where = " (in place, after crash recovery)" if p["promoted"] == p["leader_before"] else ""
        lines.append(
            f"             fault -> promotion{where} {_s(p['fault_to_promotion_s'])} "
            "(/history; REST "
            f"showed the leader at {_s(p['fault_to_rest_leader_s'])}), "
            f"-> first write {_s(p['fault_to_first_write_s'])}"
        )
    else:
        lines.append(
            f"             no promotion; writable again after {_s(p['fault_to_writable_s'])}, "
            f"first write {_s(p['fault_to_first_write_s'])} after the fault"
        )
    if p["fault_to_demotion_s"] is not None:
        lines.append(
            f"             old leader stopped accepting writes {_s(p['fault_to_demotion_s'])} "
            "after the fault"
        )
    if "etcd_down_s" in p:
        lines.append(f"             etcd down for {_s(p['etcd_down_s'])}")
    lines.append(
        f"             two writable members for {p['two_writable_s']:.2f}s, "
        f"{p['writes_acked_while_two_writable']} writes acknowledged meanwhile"
    )
    if "old_leader_rewound" in p:
        lines.append(f"             old leader ran pg_rewind: {p['old_leader_rewound']}")
    if "rejoin" in p:
        j = p["rejoin"]
        lines.append(
            f"  rejoin     {j['member']}: streaming {_s(j['restart_to_streaming_s'])} and in the "
            f"router's rotation {_s(j['restart_to_rotation_s'])} after its restart; "
            f"{j['reads_served_after']} reads served by it since"
        )
    return lines


@dataclass(slots=True)
class RestSample:
    t: float
    leader: str | None  # the member Patroni calls leader with state running
    states: dict[str, str]  # member -> "role/state"
    timeline: int | None


class PatroniWatch:
    """Polls Patroni's ``/cluster`` from a thread; records each change as a ``patroni``
    event in the ledger and keeps every distinct sample."""

    def __init__(self, cluster: PatroniCluster, ledger: Ledger, interval: float = 0.1) -> None:
        self.cluster = cluster
        self.ledger = ledger
        self.interval = interval
        self.samples: list[RestSample] = []
        self._first = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drill-patroni", daemon=True)

    def start(self) -> None:
        self._sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        t = self.ledger.now()
        info = None
        members = self.cluster.members
        for i in range(len(members)):  # the member that answered last first
            k = (self._first + i) % len(members)
            info = self.cluster.rest(members[k].name, "cluster", timeout=0.5)
            if isinstance(info, dict) and "members" in info:
                self._first = k
                break
            info = None
        if info is None:
            s = RestSample(t, None, {}, None)
        else:
            rows = info.get("members", [])
            states = {r.get("name", "?"): f"{r.get('role')}/{r.get('state')}" for r in rows}
            leader = next(
                (
                    r.get("name")
                    for r in rows
                    if r.get("role") == "leader" and r.get("state") == "running"
                ),
                None,
            )
            tl = next((r.get("timeline") for r in rows if r.get("role") == "leader"), None)
            s = RestSample(t, leader, states, tl)
        last = self.samples[-1] if self.samples else None
        if last is None or (last.leader, last.states, last.timeline) != (
            s.leader,
            s.states,
            s.timeline,
        ):
            self.samples.append(s)
            if last is not None:
                what = ", ".join(f"{k} {v}" for k, v in sorted(s.states.items()))
                self.ledger.event(
                    "patroni", f"leader {s.leader or '-'} tl {s.timeline}: {what or 'no answer'}"
                )

    def leader_seen(self, after: float, other_than: str | None = None) -> float | None:
        """When the REST API first showed a running leader (other than ``other_than``)."""
        for s in self.samples:
            if s.t >= after and s.leader is not None and s.leader != other_than:
                return s.t
        return None


@dataclass
class PatroniDeployment:
    """A Patroni cluster brought by a drill scenario (see ``Scenario.deploy``)."""

    cluster: PatroniCluster
    #: the router also reads Patroni's /cluster (RouterConfig.patroni)
    rest: bool = False
    watch: PatroniWatch | None = None
    leader_before: str | None = None
    timeline_before: int = 1
    #: scenario-specific figures for the report (seconds on the ledger's clock)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def node_dsns(self) -> dict[str, str]:
        return {m.name: m.dsn for m in self.cluster.members}

    @property
    def router_hosts(self) -> list[str]:
        return self.cluster.dsns()

    def router_config(self, config: RouterConfig) -> RouterConfig:
        if not self.rest:
            return config
        return dataclasses.replace(config, patroni=self.cluster.rest_urls())

    def begin(self, ctx: DrillContext) -> PatroniCluster:
        """Start watching and note who leads, just before the fault."""
        self.watch = PatroniWatch(self.cluster, ctx.ledger)
        self.watch.start()
        leader = self.cluster.leader()
        if leader is None:
            raise RuntimeError("no Patroni leader before the fault")
        self.leader_before = leader.name
        self.timeline_before = last_timeline(self.cluster.history())
        ctx.old_primary = leader.name
        return self.cluster

    def stop(self) -> None:
        if self.watch is not None:
            self.watch.stop()
        self.cluster.stop()

    def add_to_report(self, report: dict[str, Any], ledger: Ledger, ctx: DrillContext) -> None:
        if self.watch is not None:
            self.watch.stop()
        report["patroni"] = patroni_figures(self, ledger, ctx)
        failures = report["patroni"].pop("failures")
        if failures:
            report["failures"].extend(failures)
            report["passed"] = False


def last_timeline(history: list[list[Any]]) -> int:
    return int(history[-1][0]) + 1 if history else 1
