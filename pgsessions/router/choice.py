"""Replica choice: fewest requests in flight, ties broken at random."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def least_in_flight(candidates: Sequence[T], in_flight: Callable[[T], int]) -> T:
    """The candidate with the fewest requests in flight (random among equals)."""
    if not candidates:
        raise ValueError("no candidates")
    if len(candidates) == 1:
        return candidates[0]
    low = min(in_flight(c) for c in candidates)
    return random.choice([c for c in candidates if in_flight(c) == low])
