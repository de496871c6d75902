"""What a session id and a tenant may be: checked before any I/O, with one error each."""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from .items import utf8_safe

#: A session id is at most this many bytes of UTF-8. Every index that holds one (the
#: primary keys of conversations, messages, usage_logs and ops, and the listing index, which
#: also holds the tenant) must stay under PostgreSQL's B-tree entry limit of about 2700 bytes
#: for 8 kB pages, even for ids that do not compress.
MAX_SESSION_ID_BYTES = 1024

#: A tenant is at most this many bytes of UTF-8 (it shares the listing index with the id).
MAX_TENANT_BYTES = 256


def _check_text(what: str, value: Any, limit: int) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    if "\x00" in value or not utf8_safe(value):
        raise ValueError(f"{what} cannot contain U+0000 or lone surrogates: {value[:80]!r}")
    size = len(value.encode("utf-8"))
    if size > limit:
        raise ValueError(
            f"{what} is {size} bytes of UTF-8; at most {limit} are allowed: {value[:40]!r}..."
        )
    return value


def check_session_id(session_id: Any) -> str:
    """``session_id`` if it may name a session, else ValueError saying why: not a non-empty
    string, contains U+0000 or a lone surrogate, or longer than MAX_SESSION_ID_BYTES."""
    return _check_text("session_id", session_id, MAX_SESSION_ID_BYTES)


def check_tenant(tenant: Any) -> str:
    """``tenant`` if it may name a tenant, else ValueError (the rules of session ids, at most
    MAX_TENANT_BYTES)."""
    return _check_text("tenant", tenant, MAX_TENANT_BYTES)


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
