"""Numeric settings and their ranges: one check for config objects, the environment and CLI
flags, with a ValueError that names the setting, the value and what is allowed.

Written as positive comparisons (``low <= value``), never ``value <= 0``: NaN fails every
comparison, so a negated check would let it through.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass

#: a day, in seconds: the longest any timeout or wait of the router may be
DAY = 86_400.0
#: PostgreSQL's own ceiling on max_connections (MAX_BACKENDS): no pool can use more
MAX_CONNECTIONS = 262_143
#: the largest signed 32-bit integer (queue lengths, counts handed to C)
INT32_MAX = 2**31 - 1
#: the largest signed 64-bit integer (PostgreSQL bigint, WAL positions)
INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Range:
    """An int or a finite float between ``low`` and ``high`` (``low_open``: > low)."""

    kind: type[int] | type[float]
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        """The allowed values in words: ``a finite number > 0 and <= 86400``."""
        what = "an integer" if self.kind is int else "a finite number"
        lo = f"{'>' if self.low_open else '>='} {self.low:g}"
        hi = f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"{what} {lo} and {hi}"

    def check(self, name: str, value: object) -> int | float:
        """``value`` if it is in range (an int for an int range), else ValueError naming
        ``name``; bool is not a number here, and neither is a numeric string."""
        if isinstance(value, int) and not isinstance(value, bool):
            if self._within(value):  # exact for ints of any size (no float conversion)
                return value
        elif isinstance(value, float) and self.kind is float:
            if math.isfinite(value) and self._within(value):
                return value
        shown = repr(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise ValueError(f"{name} must be {self.describe()}, got {shown}")

    def _within(self, v: float) -> bool:
        above = self.low < v if self.low_open else self.low <= v
        below = v < self.high if self.high_open else v <= self.high
        return above and below

    def parse(self, name: str, text: str) -> int | float:
        """``text`` (an environment value or a flag) as a number in range, else ValueError."""
        try:
            value: int | float = int(text) if self.kind is int else float(text)
        except ValueError:
            raise ValueError(f"{name}={text!r} must be {self.describe()}") from None
        try:
            return self.check(name, value)
        except ValueError:
            raise ValueError(f"{name}={text!r} must be {self.describe()}") from None


def positive(high: float = DAY) -> Range:
    """A finite float > 0 and <= ``high`` (seconds unless said otherwise)."""
    return Range(float, 0, high, low_open=True)


def non_negative(high: float = DAY) -> Range:
    """A finite float >= 0 and <= ``high``."""
    return Range(float, 0, high)


def count(low: int = 0, high: int = INT32_MAX) -> Range:
    """An int >= ``low`` and <= ``high``."""
    return Range(int, low, high)


def flag(rng: Range) -> Callable[[str], int | float]:
    """An argparse ``type=`` for a flag whose value must be in ``rng``."""

    def convert(text: str) -> int | float:
        try:
            return rng.parse("value", text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: must be {rng.describe()}") from None

    return convert
