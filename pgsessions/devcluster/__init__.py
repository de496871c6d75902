"""A local primary + N streaming replicas started with pg_ctl (tests, demo, drills, bench)."""

from .cluster import LocalCluster, wait_for
from .errors import ClusterError
from .node import Node

__all__ = ["ClusterError", "LocalCluster", "Node", "wait_for"]
