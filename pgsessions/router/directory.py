"""The directory of a sharded set-up: which shard owns each bucket, at which epoch (pure).

Each shard holds the ownership of its own buckets (migration 0011); a router reads every
shard's claim (:class:`ShardClaim`) and builds one :class:`Directory` with
:func:`build_directory`, which refuses a set-up that disagrees with itself, naming the shard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache

from ..errors import DirectoryError, ShardError
from .placement import bucket_of


@dataclass(frozen=True)
class ShardClaim:
    """What one shard says of itself.

    ``shard`` is the name in the router's configuration; ``name`` and ``buckets`` the ones
    in the shard's identity row (None: not set up yet); ``owned`` maps each bucket it owns
    to the epoch it owns it at; ``cluster`` is (system identifier, database).
    """

    shard: str
    cluster: tuple[str, str]
    name: str | None = None
    buckets: int | None = None
    owned: Mapping[int, int] | None = None


@dataclass(frozen=True)
class Placement:
    """Where one conversation lives: its bucket, the owner and the owner's epoch."""

    bucket: int
    shard: str
    epoch: int


@dataclass(frozen=True)
class Directory:
    """bucket -> (owner, epoch) for every bucket of the set-up (owner None: owned by none
    of the shards reached)."""

    buckets: int
    owners: tuple[str | None, ...]
    epochs: tuple[int, ...]

    @cached_property
    def _placements(self) -> tuple[Placement | None, ...]:
        """Each bucket's Placement (None: owned by none), made once: every call asks."""
        return tuple(
            None if owner is None else Placement(bucket, owner, epoch)
            for bucket, (owner, epoch) in enumerate(zip(self.owners, self.epochs, strict=True))
        )

    def place(self, session_id: str) -> Placement:
        """Where ``session_id`` lives; DirectoryError when no shard reached owns its bucket."""
        bucket = _bucket(session_id, self.buckets)
        at = self._placements[bucket]
        if at is None:
            raise DirectoryError(
                f"bucket {bucket} (of session {session_id!r}) is owned by none of the shards "
                "this router reaches: is a shard missing from its configuration?",
                [bucket],
            )
        return at

    def counts(self) -> dict[str, int]:
        """Buckets per owner."""
        out: dict[str, int] = {}
        for owner in self.owners:
            if owner is not None:
                out[owner] = out.get(owner, 0) + 1
        return out


@lru_cache(maxsize=65_536)
def _bucket(session_id: str, buckets: int) -> int:
    # the conversations a server serves come back turn after turn: hash each once
    return bucket_of(session_id, buckets)


def ranges(buckets: Sequence[int]) -> str:
    """``[0, 1, 2, 7]`` as ``'0-2, 7'`` (for messages)."""
    out: list[str] = []
    items = sorted(buckets)
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        out.append(str(items[i]) if i == j else f"{items[i]}-{items[j]}")
        i = j + 1
    return ", ".join(out)


def check_distinct_clusters(claims: Sequence[ShardClaim]) -> None:
    """ShardError when two shards are one cluster (same system identifier and database)."""
    seen: dict[tuple[str, str], str] = {}
    for c in claims:
        other = seen.setdefault(c.cluster, c.shard)
        if other != c.shard:
            raise ShardError(
                c.shard,
                f"is the same cluster as shard {other!r} (system identifier {c.cluster[0]}, "
                f"database {c.cluster[1]!r}): each shard must be a cluster of its own",
            )


def build_directory(
    claims: Sequence[ShardClaim], buckets: int, *, complete: bool = True
) -> Directory | None:
    """One directory from every shard's claim; None when no shard is set up yet.

    Raises ShardError (naming the shard) for two shards that are one cluster, a shard set
    up under another name or another bucket count than ``buckets``, or a shard not set up
    beside shards that are; DirectoryError for a bucket claimed by two shards at the same
    epoch (at different epochs the newer claim wins: the older is a copy not yet caught up
    with a move) and, with ``complete``, for buckets owned by none of them.
    """
    check_distinct_clusters(claims)
    if all(c.name is None for c in claims):
        return None
    for c in claims:
        if c.name is None:
            raise ShardError(
                c.shard,
                "is not set up as a shard (no shard identity) while the others are: it "
                "is not part of this sharded set-up",
            )
        if c.name != c.shard:
            raise ShardError(
                c.shard, f"the cluster is shard {c.name!r} of its set-up, not {c.shard!r}"
            )
        if c.buckets != buckets:
            raise ShardError(
                c.shard,
                f"was set up with {c.buckets} buckets, the router expects {buckets} (the "
                "bucket count is fixed when a sharded set-up is made)",
            )
    owners: list[str | None] = [None] * buckets
    epochs = [0] * buckets
    twice: dict[int, list[str]] = {}
    for c in claims:
        for bucket, epoch in (c.owned or {}).items():
            if not 0 <= bucket < buckets:
                raise ShardError(c.shard, f"claims bucket {bucket}, outside 0-{buckets - 1}")
            held = owners[bucket]
            if held is not None:
                # a move's target takes a bucket at a newer epoch than the source gave up:
                # a source replica that has not replayed the fence yet claims the older one
                if epoch < epochs[bucket]:
                    continue
                if epoch == epochs[bucket]:
                    twice.setdefault(bucket, [held]).append(c.shard)
                    continue
                twice.pop(bucket, None)
            owners[bucket] = c.shard
            epochs[bucket] = epoch
    if twice:
        pairs = sorted({tuple(v) for v in twice.values()})
        raise DirectoryError(
            f"buckets {ranges(list(twice))} are claimed by two shards "
            f"({'; '.join(' and '.join(p) for p in pairs)}): the directory disagrees",
            sorted(twice),
        )
    if complete:
        none = [b for b, o in enumerate(owners) if o is None]
        if none:
            raise DirectoryError(
                f"buckets {ranges(none)} are owned by none of the shards "
                f"{', '.join(c.shard for c in claims)}: is a shard missing from the "
                "router's configuration?",
                none,
            )
    return Directory(buckets, tuple(owners), tuple(epochs))
