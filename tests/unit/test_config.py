"""RouterConfig and DSN handling: parsing host lists, env, and keeping passwords out."""

from __future__ import annotations

import pytest

from pgsessions.router import RouterConfig
from pgsessions.router.dsn import host_label, redact, split_hosts


def test_multihost_url_expands_to_one_dsn_per_host() -> None:
    dsns = split_hosts("postgresql://app:s3cret@db1:5432,db2:5433,db3/agents")
    assert [host_label(d) for d in dsns] == ["db1:5432", "db2:5433", "db3:5432"]
    assert all("dbname=agents" in d for d in dsns)


def test_comma_separated_urls_and_lists() -> None:
    text = "postgresql://a@h1:1/db, postgresql://a@h2:2/db"
    assert [host_label(d) for d in split_hosts(text)] == ["h1:1", "h2:2"]
    assert [host_label(d) for d in split_hosts(["host=h1 port=7", "host=h2"])] == [
        "h1:7",
        "h2:5432",
    ]
    # every --hosts option takes several values, each of which may itself be a list
    mixed = ["host=h1 port=7, postgresql://a@h2/db", "postgresql://a@h3:3,h4:4/db"]
    assert [host_label(d) for d in split_hosts(mixed)] == ["h1:7", "h2:5432", "h3:3", "h4:4"]


def test_every_hosts_option_takes_one_or_more_dsns() -> None:
    from pgsessions.cli import build_parser

    parser = build_parser()
    for argv in (
        ["status"],
        ["migrate"],
        ["serve-metrics"],
        ["demo"],
        ["drill", "all", "--trigger", "true"],
        ["bench"],
    ):
        two = "postgresql://a@h2:2/db,postgresql://a@h3:3/db"
        args = parser.parse_args([*argv, "--hosts", "host=h1", two])
        assert [host_label(d) for d in split_hosts(args.hosts)] == ["h1:5432", "h2:2", "h3:3"]


def test_passwords_never_in_labels_reprs_or_errors() -> None:
    cfg = RouterConfig(hosts=["postgresql://app:hunter2@db1:5432/agents", "host=db2 password=pw9"])
    assert "hunter2" not in repr(cfg) and "pw9" not in repr(cfg)
    assert "hunter2" not in redact(cfg.host_list[0])
    assert host_label(cfg.host_list[0]) == "db1:5432"


def test_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGSESSIONS_HOSTS", "postgresql://u@h1:5432,h2:5433/db")
    monkeypatch.setenv("PGSESSIONS_MAX_LAG_SECONDS", "2.5")
    cfg = RouterConfig.from_env()
    assert len(cfg.host_list) == 2 and cfg.max_lag_seconds == 2.5
    monkeypatch.setenv("PGSESSIONS_CHECK_INTERVAL", "soon")
    with pytest.raises(ValueError, match="PGSESSIONS_CHECK_INTERVAL"):
        RouterConfig.from_env()
    monkeypatch.delenv("PGSESSIONS_CHECK_INTERVAL")
    assert cfg.coalesce_reads and cfg.coalesce_writes  # on by default
    monkeypatch.setenv("PGSESSIONS_COALESCE_READS", "off")
    assert not RouterConfig.from_env().coalesce_reads
    monkeypatch.delenv("PGSESSIONS_HOSTS")
    with pytest.raises(ValueError, match="PGSESSIONS_HOSTS"):
        RouterConfig.from_env()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hosts": []}, "hosts is empty"),
        ({"check_interval": 0}, "check_interval must be a finite number > 0"),
        ({"max_lag_bytes": -1}, "max_lag_bytes"),
        ({"no_replica_policy": "maybe"}, "no_replica_policy"),
        ({"schema": "x; drop table y"}, "schema"),
    ],
)
def test_bad_config_names_the_problem(kwargs: dict[str, object], message: str) -> None:
    full: dict[str, object] = {"hosts": ["postgresql://u@h/db"], **kwargs}
    with pytest.raises(ValueError, match=message):
        RouterConfig(**full)  # type: ignore[arg-type]


def test_failover_timeout_stays_under_the_op_id_retention() -> None:
    with pytest.raises(ValueError, match=r"failover_timeout must be .* and < 3600"):
        RouterConfig(hosts=["host=h1"], failover_timeout=3600)
    assert RouterConfig(hosts=["host=h1"], failover_timeout=600).failover_timeout == 600
