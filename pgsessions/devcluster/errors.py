"""Errors of the local cluster harness."""

from __future__ import annotations


class ClusterError(RuntimeError):
    """Something the local cluster could not do; the message says what and why."""
