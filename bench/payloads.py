"""Realistic conversation items for the workloads, with markers the correctness guard checks."""

from __future__ import annotations

import random
from typing import Any

_WORDS = (
    "the replica applied every record of the write ahead log before the session read its "
    "history so the agent answered with the latest context about invoices shipping dates "
    "refunds tracking numbers weather forecasts database migrations connection pools "
    "latency budgets tokens embeddings summaries customers orders and support tickets"
).split()

USER_TEXT_BYTES = 200
ASSISTANT_TEXT_BYTES = 1000


def _text(rng: random.Random, nbytes: int) -> str:
    out: list[str] = []
    size = 0
    while size < nbytes:
        w = rng.choice(_WORDS)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)


class Payloads:
    """A pool of pre-generated texts so that generating items costs no measurable time."""

    def __init__(self, seed: int = 7, variants: int = 64) -> None:
        rng = random.Random(seed)
        self._user = [_text(rng, USER_TEXT_BYTES) for _ in range(variants)]
        self._assistant = [_text(rng, ASSISTANT_TEXT_BYTES) for _ in range(variants)]

    def user_text(self, sid: str, n: int) -> str:
        return f"{user_marker(sid, n)} {self._user[n % len(self._user)]}"

    def assistant_text(self, sid: str, n: int) -> str:
        return f"{assistant_marker(sid, n)} {self._assistant[n % len(self._assistant)]}"

    def turn(self, sid: str, n: int) -> list[Any]:
        """Turn ``n`` of session ``sid``: a user message and an assistant message (~1.4 KB)."""
        return [
            {"role": "user", "content": self.user_text(sid, n)},
            {
                "id": f"msg_{n:08d}",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [
                    {
                        "type": "output_text",
                        "text": self.assistant_text(sid, n),
                        "annotations": [],
                        "logprobs": [],
                    }
                ],
            },
        ]


def user_marker(sid: str, n: int) -> str:
    return f"[{sid}#{n}]"


def assistant_marker(sid: str, n: int) -> str:
    return f"[re:{sid}#{n}]"


def item_text(item: Any) -> str:
    """The text of a user, assistant or seeded item ('' when it has none)."""
    if not isinstance(item, dict):
        return ""
    content = item.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and isinstance(content[0], dict):
        text = content[0].get("text")
        return text if isinstance(text, str) else ""
    return ""


# Seeded history (server-side INSERT ... SELECT generate_series): item i (1-based) is
# {"role": "user"|"assistant", "content": "seed-<i> <~1 KB of hex>"}.
SEED_FILLER_MD5S = 30  # 30 x 32 hex chars ~ 1 KB per seeded item


def seed_prefix(i: int) -> str:
    return f"seed-{i} "


def check_seeded_tail(items: list[Any], total: int, limit: int) -> str | None:
    """None if ``items`` are exactly the last ``limit`` of ``total`` seeded items, in order."""
    want = min(total, limit)
    if len(items) != want:
        return f"expected {want} items, got {len(items)}"
    for k, item in enumerate(items):
        i = total - want + 1 + k
        text = item_text(item)
        if not text.startswith(seed_prefix(i)):
            return f"item {k}: expected seed-{i}, got {text[:24]!r}"
        role = "user" if i % 2 else "assistant"
        if item.get("role") != role:
            return f"item {k}: expected role {role}, got {item.get('role')!r}"
    return None
