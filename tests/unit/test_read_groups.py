"""Read coalescing decisions (pgsessions/router/readgroups.py), without a server: which
reads form a group, and which members a group's replay check covers."""

from __future__ import annotations

import asyncio

from pgsessions.router.readgroups import Group, Member, ReadGroups, check_lsn, served


def _member(loop: asyncio.AbstractEventLoop, lsn: int | None) -> Member:
    return Member("SELECT 1", None, lsn, loop.create_future())


async def test_check_lsn_is_the_highest_position_needed() -> None:
    loop = asyncio.get_running_loop()
    assert check_lsn([_member(loop, None), _member(loop, None)]) is None
    assert check_lsn([_member(loop, 5), _member(loop, None), _member(loop, 9)]) == 9


async def test_served_only_members_the_check_covers() -> None:
    loop = asyncio.get_running_loop()
    members = [_member(loop, None), _member(loop, 5), _member(loop, 9)]
    assert served(members, 9) == [True, True, True]
    assert served(members, 7) == [True, True, False]  # the third waits alone
    assert served(members, None) == [True, False, False]  # no answer: none that needs one


async def test_reads_of_one_step_form_one_group_per_host_and_setup() -> None:
    started: list[Group] = []
    groups = ReadGroups(started.append)
    tenant_a, tenant_b = ("SELECT set_config('t', %s, true)", ("a",)), ("SELECT 1", ("b",))
    futs = [groups.join("r1:5432", tenant_a, "q", (i,), 10) for i in range(3)]
    other_host = groups.join("r2:5432", tenant_a, "q", (9,), 10)
    other_tenant = groups.join("r1:5432", tenant_b, "q", (8,), None)
    assert not started  # sent at the next loop step, not before
    await asyncio.sleep(0)
    assert len(started) == 1
    (g,) = started
    assert (g.host, g.setup) == ("r1:5432", tenant_a)
    assert [m.params for m in g.members] == [(0,), (1,), (2,)]
    assert not any(f.done() for f in futs)
    # alone in their groups: they run on their own path, as without coalescing
    assert other_host.result() is None and other_tenant.result() is None


async def test_a_group_is_bounded_and_a_later_step_opens_another() -> None:
    started: list[Group] = []
    groups = ReadGroups(started.append, max_reads=4)
    for i in range(6):
        groups.join("r1:5432", None, "q", (i,), None)
    await asyncio.sleep(0)
    assert sorted(len(g.members) for g in started) == [2, 4]
    groups.join("r1:5432", None, "q", (7,), None)
    groups.join("r1:5432", None, "q", (8,), None)
    await asyncio.sleep(0)
    assert len(started) == 3 and len(started[-1].members) == 2


async def test_a_member_whose_caller_left_is_dropped() -> None:
    started: list[Group] = []
    groups = ReadGroups(started.append)
    gone = groups.join("r1:5432", None, "q", (1,), None)
    stays = groups.join("r1:5432", None, "q", (2,), None)
    gone.cancel()
    await asyncio.sleep(0)
    assert not started and stays.result() is None  # one left: it runs alone


async def test_note_hears_of_reads_alone_and_withdrawn() -> None:
    started: list[Group] = []
    notes: list[tuple[str, str]] = []
    groups = ReadGroups(started.append, note=lambda out, m: notes.append((out, m.operation)))
    gone = groups.join("r1:5432", None, "q", (1,), None, "get_items")
    groups.join("r1:5432", None, "q", (2,), None, "get_items")
    groups.join("r2:5432", None, "q", (3,), None, "other")
    gone.cancel()
    await asyncio.sleep(0)
    assert not started
    assert sorted(notes) == [("alone", "get_items"), ("alone", "other"), ("withdrawn", "get_items")]
    a = groups.join("r1:5432", None, "q", (4,), None, "get_items")
    b = groups.join("r1:5432", None, "q", (5,), None, "get_items")
    await asyncio.sleep(0)
    (g,) = started
    assert [m.operation for m in g.members] == ["get_items", "get_items"]
    assert all(m.joined_at <= g.members[-1].joined_at for m in g.members)
    assert not a.done() and not b.done() and len(notes) == 3  # a group: the router's to count
