"""Operation ids: UUIDv7 (RFC 9562), so the index that holds them grows at its right end."""

from __future__ import annotations

import os
import time
import uuid


def new_op_id() -> uuid.UUID:
    """A random UUID whose first 48 bits are the Unix time in milliseconds (version 7).

    Time-ordered ids land on the newest pages of ``messages_op_key`` and ``ops``' primary
    key instead of a random page each (fewer page splits and full-page images in the WAL).
    Uniqueness comes from the 74 random bits.
    """
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | rand
    # version 7 in bits 76-79, variant 0b10 in bits 62-63
    value = (value & ~(0xF << 76)) | (0x7 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    return uuid.UUID(int=value)
