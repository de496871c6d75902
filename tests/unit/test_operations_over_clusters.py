"""Operations that span conversations over every cluster a router reaches: the pure parts
(merging usage reports and listing pages), no server needed."""

from __future__ import annotations

from pgsessions.analytics.report import combine
from pgsessions.router import RouteKey
from pgsessions.router.protocol import route_key


def test_one_cluster_is_returned_as_it_is() -> None:
    rows = [{"model": "m", "turns": 1, "total_tokens": 5, "sessions": 1}]
    assert combine("by_model", [rows], 10) is rows


def test_totals_add_up_across_clusters_and_keep_the_report_order() -> None:
    a = [
        {"day": "2026-12-01", "turns": 2, "requests": 2, "input_tokens": 10, "output_tokens": 1,
         "total_tokens": 11, "sessions": 1},
    ]  # fmt: skip
    b = [
        {"day": "2026-11-30", "turns": 1, "requests": 1, "input_tokens": 5, "output_tokens": 1,
         "total_tokens": 6, "sessions": 1},
        {"day": "2026-12-01", "turns": 3, "requests": 4, "input_tokens": 7, "output_tokens": 2,
         "total_tokens": 9, "sessions": 2},
    ]  # fmt: skip
    days = combine("by_day", [a, b], 10)
    assert [d["day"] for d in days] == ["2026-11-30", "2026-12-01"]
    assert days[1]["turns"] == 5 and days[1]["total_tokens"] == 20 and days[1]["sessions"] == 3


def test_rankings_are_merged_and_cut_to_top() -> None:
    a = [{"session_id": "a1", "turns": 9, "requests": 9, "total_tokens": 1, "items_added": 2}]
    b = [
        {"session_id": "b1", "turns": 9, "requests": 10, "total_tokens": 1, "items_added": 1},
        {"session_id": "b2", "turns": 1, "requests": 1, "total_tokens": 1, "items_added": 1},
    ]
    busiest = combine("busiest", [a, b], 2)
    assert [r["session_id"] for r in busiest] == ["b1", "a1"]


def test_route_keys() -> None:
    assert route_key("s") == RouteKey(None, "s")
    assert route_key(RouteKey("t", "s")) == RouteKey("t", "s")
    assert route_key(None) is None
    assert hash(route_key("s")) == hash(RouteKey(None, "s"))


def test_every_report_can_be_combined() -> None:
    from pgsessions.analytics.report import _KEYS
    from pgsessions.sessions.sql.reports import REPORTS

    assert set(REPORTS) == set(_KEYS)
    tools = [
        [{"tool": "search", "calls": 2, "sessions": 1}],
        [{"tool": "search", "calls": 3, "sessions": 2}],
    ]
    assert combine("by_tool", tools, 10) == [{"tool": "search", "calls": 5, "sessions": 3}]
