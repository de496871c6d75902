"""The read planner: which host serves a read, as a pure function of a snapshot.

+-------------------------+-----------------------------------------------------------+
| reason                  | when                                                      |
+=========================+===========================================================+
| ``primary_only``        | ``read_from_replicas=False``: the primary (None if none)  |
| ``replica``             | an eligible replica has replayed the required position    |
| ``no_primary``          | no primary known (failover): an answering standby         |
| ``caught_up_wait``      | none has: wait on the most advanced one (``wait_lsn``)     |
| ``token_ahead``         | the wait failed or is off: the primary                    |
| ``no_eligible_replica`` | no replica may serve: the primary under policy "primary", |
|                         | else no host (the caller waits or raises)                 |
+-------------------------+-----------------------------------------------------------+

In a split brain the router keeps the previous primary (if it is one of the writable hosts)
for reads, and no replica is eligible (lag cannot be measured): reads go to that primary, or
with no primary to an answering standby.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from .config import RouterConfig


class PlannedHost(Protocol):
    """What the planner reads of a host (the router's ``Host``, or plain data in tests)."""

    @property
    def label(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def usable(self) -> bool: ...
    @property
    def eligible(self) -> bool: ...
    @property
    def replay_lsn(self) -> int: ...
    @property
    def in_flight(self) -> int: ...


H = TypeVar("H", bound=PlannedHost)
T = TypeVar("T")


@dataclass(frozen=True)
class ReadPlan(Generic[H]):
    """Where a read runs (``host`` None: nowhere now) and why; ``wait_lsn``: wait first."""

    host: H | None
    reason: str
    wait_lsn: int | None = None


def required_position(token: int | None, primary_lsn: int | None, floor: int) -> int | None:
    """The position a read must see: the newest of the session's token, the primary's flush
    position at the last check and the admin floor (None when none is known).

    A token can only make a read fresher: it raises the bar, never lowers it.
    """
    best = max(token or 0, primary_lsn or 0, floor)
    return best if best > 0 or token is not None else None


def plan_read(
    hosts: Sequence[H],
    primary: str | None,
    required: int | None,
    config: RouterConfig,
    *,
    excluded: Collection[str] = (),
    allow_wait: bool = True,
) -> ReadPlan[H]:
    """Choose the host for one read attempt (see the table in the module docstring).

    ``excluded``: hosts that already failed this read. ``allow_wait``: False once a
    caught-up wait has failed. ``required`` None: any replica will do.
    """
    # plain loops, not comprehensions: this runs on every read, and a comprehension's
    # function and the cells it closes over are garbage the collector has to count
    prim: H | None = None
    if primary:
        for h in hosts:
            if h.label == primary:
                prim = h
                break
    if prim is not None and (not prim.usable or prim.label in excluded):
        prim = None
    if not config.read_from_replicas:
        return ReadPlan(prim, "primary_only")
    candidates: list[H] = []
    if primary is not None:
        for h in hosts:
            if h.eligible and h.usable and h.label not in excluded:
                candidates.append(h)
        served = "replica"
    else:
        # no primary (failover under way): any answering standby may serve what it has
        for h in hosts:
            if h.role == "replica" and h.usable and h.label not in excluded:
                candidates.append(h)
        served = "no_primary"
    need = required
    fresh: list[H] = []
    for h in candidates:
        if need is None or h.replay_lsn >= need:
            fresh.append(h)
    if fresh:
        return ReadPlan(least_in_flight(fresh, _in_flight), served)
    if candidates and allow_wait and config.catch_up_wait > 0:
        # the most advanced replicas; usually all of them were level at the last check, and
        # read-your-writes traffic must not all queue on the first one
        top = max(h.replay_lsn for h in candidates)
        level: list[H] = []
        for h in candidates:
            if h.replay_lsn == top:
                level.append(h)
        return ReadPlan(least_in_flight(level, _in_flight), "caught_up_wait", wait_lsn=need)
    if candidates:
        return ReadPlan(prim, "token_ahead")
    if config.no_replica_policy != "primary":
        return ReadPlan(None, "no_eligible_replica")  # "wait" or "error": not the primary
    return ReadPlan(prim, "no_eligible_replica")


def _in_flight(h: PlannedHost) -> int:
    return h.in_flight


def least_in_flight(candidates: Sequence[T], in_flight: Callable[[T], int]) -> T:
    """The candidate with the fewest requests in flight (random among equals)."""
    if not candidates:
        raise ValueError("no candidates")
    if len(candidates) == 1:
        return candidates[0]
    counts = [in_flight(c) for c in candidates]
    low = min(counts)
    return random.choice([c for c, n in zip(candidates, counts, strict=True) if n == low])
