"""Parsing and redacting psycopg conninfo strings."""

from __future__ import annotations

import re

from psycopg.conninfo import conninfo_to_dict, make_conninfo


def split_hosts(hosts: str | list[str] | tuple[str, ...]) -> list[str]:
    """Turn a comma-separated DSN list, a libpq multi-host URL or a list of either into one
    DSN per host (so ``--hosts a b`` and ``--hosts a,b`` mean the same)."""
    if not isinstance(hosts, str):
        return [dsn for value in hosts if value for dsn in split_hosts(value)]
    raw = hosts.strip()
    if not raw:
        return []
    if _is_multihost(raw):
        return expand_multihost(raw)
    parts = [p.strip() for p in _split_top_level_commas(raw) if p.strip()]
    out: list[str] = []
    for p in parts:
        out.extend(expand_multihost(p) if _is_multihost(p) else [p])
    return out


def _split_top_level_commas(raw: str) -> list[str]:
    # A comma separates DSNs only when the next part starts a new URL or key=value string.
    pieces = re.split(r",(?=\s*(?:postgres(?:ql)?://|\w+\s*=))", raw)
    return pieces


def _is_multihost(dsn: str) -> bool:
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return False
    host = str(params.get("host") or "")
    return "," in host


def expand_multihost(dsn: str) -> list[str]:
    """``postgresql://u@h1:5432,h2:5433/db`` -> one DSN per host."""
    params = conninfo_to_dict(dsn)
    hosts = str(params.get("host") or "").split(",")
    ports = str(params.get("port") or "").split(",") if params.get("port") else []
    if ports and len(ports) not in (1, len(hosts)):
        raise ValueError("multi-host DSN: the number of ports must be 1 or match the hosts")
    out = []
    for i, h in enumerate(hosts):
        p = dict(params)
        p["host"] = h
        if ports:
            p["port"] = ports[i] if len(ports) > 1 else ports[0]
        p.pop("target_session_attrs", None)
        out.append(make_conninfo("", **p))
    return out


def host_label(dsn: str) -> str:
    """``host:port`` of a DSN: safe for logs and metric labels (no user, no password)."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return "<invalid dsn>"
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    if host.startswith("/"):
        return f"{host}:{port}"
    return f"{host}:{port}"


def redact(dsn: str) -> str:
    """The DSN with any password replaced by ``***``."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return "<invalid dsn>"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo("", **params)
