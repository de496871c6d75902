"""A one-line progress display for long commands (export, import, prune)."""

from __future__ import annotations

import sys
import time


class Progress:
    """A status line on stderr at most once a second (and once at the end)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._last = 0.0

    def show(self, text: str, *, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self._last < 1.0):
            return
        self._last = now
        print(f"\r{text}", end="\n" if final else "", file=sys.stderr, flush=True)
