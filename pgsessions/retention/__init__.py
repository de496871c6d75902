"""Retention: ``pgsessions prune`` deletes conversations idle longer than a cutoff, in small
batches, and prunes old operation ids (:func:`prune`)."""

from __future__ import annotations

from .prune import PruneSummary, prune

__all__ = ["PruneSummary", "prune"]
