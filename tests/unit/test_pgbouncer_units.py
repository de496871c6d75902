"""Decisions behind PgBouncer support, without a server: DSN options, the prepared-statement
knob, probe replies, error classification and invalid DSNs."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from pgsessions.router import RouterConfig
from pgsessions.router.classify import classify, is_connection_loss
from pgsessions.router.connect import connect_kwargs, prepared_statement_failure, refuses_options
from pgsessions.router.dsn import split_hosts, strip_own_options
from pgsessions.router.probe import Probe, UnexpectedReply, parse_probe_row

GOOD_PRIMARY = (False, "0/3000060", None, None, None, 1796172342.5, None, None)
GOOD_REPLICA = (True, None, "0/3000060", "0/3000060", 1796172340.0, 1796172342.5, "streaming",
                None)  # fmt: skip


def test_probe_row_of_the_right_shape() -> None:
    p = parse_probe_row(GOOD_PRIMARY, 1.0)
    assert p == Probe(
        up=True, in_recovery=False, flush_lsn=0x3000060, server_now=1796172342.5, started=1.0
    )
    r = parse_probe_row(GOOD_REPLICA, 2.0)
    assert (r.in_recovery, r.replay_lsn, r.wal_status) == (True, 0x3000060, "streaming")


@pytest.mark.parametrize(
    "row",
    [
        None,
        ("False",),  # another client's one-column statement ran in its place
        (),
        (*GOOD_PRIMARY, 1),
        ("f", *GOOD_PRIMARY[1:]),  # text where a bool belongs
        (False, "False", *GOOD_PRIMARY[2:]),  # not an LSN
        (False, 5, *GOOD_PRIMARY[2:]),  # an LSN that is not text
        (False, None, *GOOD_PRIMARY[2:]),  # a primary without a position
        (*GOOD_REPLICA[:4], "soon", *GOOD_REPLICA[5:]),
        (*GOOD_REPLICA[:5], None, "streaming", None),  # no clock
        (*GOOD_REPLICA[:6], 3, None),
        (*GOOD_PRIMARY[:7], "[1, 2]"),  # archiver stats that are no JSON object
        (*GOOD_PRIMARY[:7], {"archived": 1}),  # archiver stats without their counts
    ],
)
def test_probe_reply_of_the_wrong_shape_is_refused(row: object) -> None:
    with pytest.raises(UnexpectedReply, match="unexpected reply"):
        parse_probe_row(row, 0.0)


def test_protocol_violation_at_error_severity_is_not_a_lost_connection() -> None:
    exc = errors.ProtocolViolation(
        'bind message supplies 0 parameters, but prepared statement "_pg3_0" requires 6'
    )
    assert classify(exc, write=True) is None and classify(exc, write=False) is None
    assert not is_connection_loss(exc)
    # other class 08 errors, and losing the server, still are
    assert is_connection_loss(errors.ConnectionFailure("gone"))
    assert is_connection_loss(psycopg.OperationalError("server closed the connection"))


@pytest.mark.parametrize(
    "exc",
    [
        errors.ProtocolViolation(
            'bind message supplies 0 parameters, but prepared statement "_pg3_0" requires 6'
        ),
        errors.InvalidSqlStatementName('prepared statement "_pg3_5" does not exist'),
        errors.DuplicatePreparedStatement('prepared statement "_pg3_0" already exists'),
    ],
)
def test_pooler_prepared_statement_failures_are_recognised(exc: psycopg.Error) -> None:
    assert prepared_statement_failure(exc) is not None


def test_other_errors_are_not_taken_for_prepared_statement_failures() -> None:
    assert prepared_statement_failure(errors.InvalidSqlStatementName('"mine" missing')) is None
    assert prepared_statement_failure(errors.UniqueViolation('"_pg3_0"')) is None
    assert prepared_statement_failure(ValueError('"_pg3_0"')) is None


def test_invalid_dsn_is_reported_as_itself() -> None:
    bad = ["host=h1 password=hunter2 prepare_threshold=0", "host=h2 prepare_threshold=0"]
    with pytest.raises(ValueError) as info:
        RouterConfig(hosts=bad)
    text = str(info.value)
    assert "hosts[0] is not a valid PostgreSQL DSN" in text
    assert 'invalid connection option "prepare_threshold"' in text
    assert "prepared_statements=off" in text  # names the setting that does it
    assert "twice" not in text and "hunter2" not in text
    with pytest.raises(ValueError, match=r"hosts\[1\].*missing \"=\""):
        RouterConfig(hosts=["host=h1", "host=h2 garbage"])
    with pytest.raises(ValueError) as info:
        RouterConfig(hosts=["postgresql://app:s3cret@h1/db?bogus=1"])
    assert "s3cret" not in str(info.value) and "bogus" in str(info.value)


def test_prepared_statements_knob_in_config_dsn_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = RouterConfig(
        hosts=[
            "postgresql://app@h1:6432/db?prepared_statements=off&sslmode=disable",
            "host=h2 port=5432 prepared_statements=on",
            "postgresql://app@h3/db",
        ]
    )
    h1, h2, h3 = cfg.host_list
    assert "prepared_statements" not in h1 + h2 and "sslmode=disable" in h1
    assert [cfg.prepared_statements_for(h) for h in (h1, h2, h3)] == ["off", "on", "auto"]
    # auto and off connect without preparing; auto turns it on once it sees no pooler
    assert [connect_kwargs(h, cfg)["prepare_threshold"] for h in (h1, h2, h3)] == [None, 5, None]
    assert "statement_timeout=10000" in connect_kwargs(h1, cfg)["options"]
    off = RouterConfig(hosts="postgresql://a@h1:1,h2:2/db?prepared_statements=off")
    assert [off.prepared_statements_for(h) for h in off.host_list] == ["off", "off"]
    monkeypatch.setenv("PGSESSIONS_HOSTS", "host=h1")
    monkeypatch.setenv("PGSESSIONS_PREPARED_STATEMENTS", "off")
    assert RouterConfig.from_env().prepared_statements_for("host=h1") == "off"
    monkeypatch.setenv("PGSESSIONS_PREPARED_STATEMENTS", "never")
    with pytest.raises(ValueError, match="prepared_statements must be auto, on or off"):
        RouterConfig.from_env()
    with pytest.raises(ValueError, match=r"hosts\[0\].*prepared_statements"):
        RouterConfig(hosts=["host=h1 prepared_statements=maybe"])


def test_own_options_are_stripped_and_the_rest_kept() -> None:
    url = "postgresql://u@h/db?options=-c%20search_path%3Dx&prepared_statements=off"
    assert strip_own_options(url) == (
        "postgresql://u@h/db?options=-c%20search_path%3Dx",
        {"prepared_statements": "off"},
    )
    assert strip_own_options("host=h prepared_statements='off' port=1") == (
        "host=h port=1",
        {"prepared_statements": "off"},
    )
    assert strip_own_options("postgresql://u@h/db") == ("postgresql://u@h/db", {})
    assert len(split_hosts("postgresql://u@h1,h2/db?prepared_statements=off")) == 2


def test_the_dsns_own_options_are_kept_and_the_routers_settings_win() -> None:
    cfg = RouterConfig(hosts=["host=h1 options='-c search_path=app'"])
    options = connect_kwargs(cfg.host_list[0], cfg)["options"]
    assert options.startswith("-c search_path=app ")
    assert options.index("search_path") < options.index("statement_timeout")


def test_a_pooler_refusing_connect_options_is_recognised() -> None:
    exc = psycopg.OperationalError(
        'connection failed: connection to server at "127.0.0.1", port 6432 failed: '
        "FATAL:  unsupported startup parameter: options"
    )
    assert refuses_options(exc)
    assert not refuses_options(psycopg.OperationalError("connection refused"))
