"""Stacked writes (router/stacked.py, execution._runs): which writes of a batch go as one
statement over VALUES, its text, and how its rows go back to each write (no server)."""

from __future__ import annotations

import pickle

import psycopg
import pytest

from pgsessions.router.execution import _runs
from pgsessions.router.stacked import Stacked, split_rows, stacked_query

ADD = Stacked("s.f", ("%s::text", "%s::uuid"))
OTHER = Stacked("s.g", ("%s::text",))


def test_a_stacked_statement_is_its_one_write_form() -> None:
    assert ADD == "SELECT s.f(%s::text, %s::uuid)"
    # numbered parameters (a raw cursor: no client-side parsing), each with its cast
    assert stacked_query(ADD, 2) == (
        "SELECT v.n, s.f(v.a0, v.a1) FROM (VALUES (1, $1::text, $2::uuid),"
        " (2, $3::text, $4::uuid)) AS v(n, a0, a1)"
    )
    assert "$21::text, $22::uuid)) AS" in stacked_query(ADD, 11)
    with pytest.raises(ValueError, match="starts with %s or %b"):
        Stacked("s.h", ("$1::text",))
    again = pickle.loads(pickle.dumps(ADD))
    assert again == ADD and again.placeholders == ADD.placeholders


def test_consecutive_writes_of_one_stacked_statement_go_as_one() -> None:
    batch = [
        (ADD, ("a", 1)),
        (ADD, ("b", 2)),
        (ADD, ("c", 3)),
        ("SELECT 1", None),
        (ADD, ("d", 4)),
        (OTHER, ("e",)),
        (OTHER, ("f",)),
        (ADD, {"named": 1}),  # named parameters cannot be laid end to end
        (ADD, ("g", 5)),
    ]
    got = list(_runs(batch))  # type: ignore[arg-type]
    assert [(k, p) for _, p, k in got] == [
        (3, ["a", 1, "b", 2, "c", 3]),
        (0, None),
        (0, ("d", 4)),
        (2, ["e", "f"]),
        (0, {"named": 1}),
        (0, ("g", 5)),
    ]
    assert got[0][0] == stacked_query(ADD, 3) and got[2][0] is ADD


def test_each_write_gets_its_own_row_back() -> None:
    assert split_rows([(1, True), (2, False)], 2) == [[(True,)], [(False,)]]
    assert split_rows([(2, False), (1, True)], 2) == [[(True,)], [(False,)]]


@pytest.mark.parametrize("rows", [[(1, True)], [(1, True), (1, True)], [(1, 1), (3, 1)]])
def test_rows_that_do_not_match_the_writes_are_an_error(rows: list[tuple[int, bool]]) -> None:
    with pytest.raises(psycopg.ProgrammingError, match="stacked statement of 2 writes"):
        split_rows(rows, 2)
