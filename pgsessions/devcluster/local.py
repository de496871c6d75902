"""The local cluster that commands use when no hosts are given: found in its directory,
started if it is not running."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .cluster import STATE_FILE, LocalCluster
from .errors import ClusterError

DEFAULT_DIR = Path(".pgsessions") / "cluster"


def default_dir() -> Path:
    return Path(os.environ.get("PGSESSIONS_CLUSTER_DIR") or DEFAULT_DIR)


def ensure_local_cluster(
    base_dir: Path | None = None,
    *,
    replicas: int = 2,
    sync: bool = False,
    tls: bool = False,
    settings: dict[str, str] | None = None,
) -> tuple[LocalCluster, bool]:
    """The local cluster in ``base_dir``, started if it is not running.

    Returns the cluster and whether this call started it (the caller stops what it started).
    ``tls=True`` starts a TLS cluster whose superuser password is ``PGPASSWORD`` if set.
    """
    base = (base_dir or default_dir()).resolve()
    if (base / STATE_FILE).exists():
        existing = LocalCluster.load(base)
        if tls and existing.tls is None:
            raise ClusterError(f"a cluster without TLS is in {base}: `cluster down` it first")
        if existing.is_running():
            return existing, False
        try:
            existing.resume()
            return existing, True
        except ClusterError:
            pass  # unusable leftovers: LocalCluster.start() below cleans the directory
    password = (os.environ.get("PGPASSWORD") or None) if tls else None
    cluster = LocalCluster(
        replicas=replicas,
        sync=sync,
        base_dir=base,
        keep=True,
        tls=tls,
        password=password,
        settings=settings,
    )
    cluster.start()
    return cluster, True


@contextmanager
def hosts_or_local_cluster(
    hosts: Sequence[str] | None, *, keep: bool = False
) -> Iterator[list[str]]:
    """The DSNs a command should use: ``--hosts``, else ``PGSESSIONS_HOSTS``, else the local
    cluster (started if it is not running, and then stopped on exit unless ``keep``)."""
    from ..router.dsn import split_hosts

    if hosts:
        yield split_hosts(list(hosts))
        return
    env = os.environ.get("PGSESSIONS_HOSTS")
    if env:
        yield split_hosts(env)
        return
    cluster, started = ensure_local_cluster()
    if started:
        print(f"started the local cluster in {cluster.base_dir}", file=sys.stderr)
    try:
        yield cluster.dsns()
    finally:
        if started and not keep:
            cluster.stop()
