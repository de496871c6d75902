"""The pure parts of moving buckets: the bucket list a command takes, and the rebalance plan."""

from __future__ import annotations

import pytest

from pgsessions.router.directory import Directory
from pgsessions.shards import parse_buckets, plan_rebalance


def test_buckets_are_one_a_range_or_a_list() -> None:
    assert parse_buckets("7") == [7]
    assert parse_buckets("0-3") == [0, 1, 2, 3]
    assert parse_buckets("9-10, 1,5,1") == [1, 5, 9, 10]
    for bad in ("", "x", "3-1", "-2", "1-", "1,,a"):
        with pytest.raises(ValueError):
            parse_buckets(bad)


def directory(owners: list[str | None]) -> Directory:
    return Directory(len(owners), tuple(owners), tuple([1] * len(owners)))


def after(d: Directory, plan: list[tuple[list[int], str]]) -> dict[str, int]:
    owners = list(d.owners)
    for batch, to in plan:
        assert len({owners[b] for b in batch}) == 1  # one source per move
        for b in batch:
            owners[b] = to
    return directory(owners).counts()


def test_a_new_shard_gets_an_even_share_from_the_fullest() -> None:
    d = directory(["s1"] * 8 + ["s2"] * 8)
    plan = plan_rebalance(d, ["s1", "s2", "s3"], limit=2)
    assert after(d, plan) == {"s1": 6, "s2": 5, "s3": 5}
    assert all(len(batch) <= 2 and to == "s3" for batch, to in plan)
    assert plan_rebalance(d, ["s1", "s2"]) == []  # even already


def test_a_shard_left_out_gives_everything_away() -> None:
    d = directory(["s1"] * 5 + ["s2"] * 5 + ["s3"] * 6)
    assert after(d, plan_rebalance(d, ["s1", "s2"])) == {"s1": 8, "s2": 8}
