"""PostgreSQL LSNs as integers, and consistency tokens."""

from __future__ import annotations


def parse_lsn(text: str) -> int:
    """``'0/4000028'`` -> 67108904. Raises ValueError naming the bad value."""
    try:
        hi, lo = text.strip().split("/")
        return (int(hi, 16) << 32) | int(lo, 16)
    except (ValueError, AttributeError):
        raise ValueError(f"not a PostgreSQL LSN: {text!r}") from None


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
