"""Parsing and redacting psycopg conninfo strings."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from psycopg.conninfo import conninfo_to_dict, make_conninfo

#: options a DSN may carry for pgsessions itself; removed before libpq/psycopg sees the DSN
OWN_OPTIONS = ("prepared_statements",)
_URL_RE = re.compile(r"^\s*postgres(?:ql)?://", re.IGNORECASE)
_KV_OWN_RE = re.compile(r"(?:^|\s+)(" + "|".join(OWN_OPTIONS) + r")\s*=\s*('(?:[^'\\]|\\.)*'|\S*)")


def strip_own_options(dsn: str) -> tuple[str, dict[str, str]]:
    """Split ``dsn`` into the conninfo psycopg may see and pgsessions' own options.

    ``postgresql://h/db?prepared_statements=off`` -> (``postgresql://h/db``,
    ``{"prepared_statements": "off"}``); the same for ``key=value`` strings.
    """
    own: dict[str, str] = {}
    if _URL_RE.match(dsn):
        parts = urlsplit(dsn.strip())
        if not parts.query:
            return dsn, own
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if not any(k in OWN_OPTIONS for k, _ in pairs):
            return dsn, own
        rest = []
        for k, v in pairs:
            if k in OWN_OPTIONS:
                own[k] = v
            else:
                rest.append((k, v))
        query = urlencode(rest, quote_via=quote)
        return urlunsplit(parts._replace(query=query)), own

    def take(m: re.Match[str]) -> str:
        value = m.group(2)
        if value.startswith("'") and value.endswith("'") and len(value) >= 2:
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        own[m.group(1)] = value
        return ""

    return _KV_OWN_RE.sub(take, dsn).strip(), own


def with_own_options(dsn: str, own: dict[str, str]) -> str:
    """``dsn`` (a ``key=value`` conninfo) with pgsessions' own options appended again."""
    return " ".join([dsn, *(f"{k}={v}" for k, v in own.items())]) if own else dsn


_SECRET_RES = (
    re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S*)", re.IGNORECASE),
    re.compile(r"(://[^:/@\s]*:)([^@\s]*)(@)"),
)


def scrub(text: str) -> str:
    """``text`` with anything that looks like a password replaced by ``***`` (best effort,
    for DSNs that cannot be parsed and for their parse errors)."""
    for rx in _SECRET_RES:
        text = rx.sub(lambda m: m.group(1) + "***" + (m.group(3) if m.lastindex == 3 else ""), text)
    return text


def scrub_secrets_of(dsn: str, text: str) -> str:
    """``text`` (e.g. libpq's parse error about ``dsn``) with whatever ``dsn`` holds as a
    password replaced by ``***``: libpq quotes the offending token, which may be the
    password itself (``invalid percent-encoded token: "s3cr%t"``)."""
    for rx in _SECRET_RES:
        for m in rx.finditer(dsn):
            secret = m.group(2)
            if secret.startswith("'") and secret.endswith("'") and len(secret) >= 2:
                secret = secret[1:-1]
            if secret:
                text = text.replace(secret, "***")
    return scrub(text)


def check_dsn(dsn: str) -> str | None:
    """None when libpq can parse ``dsn`` (without pgsessions' own options), else why not."""
    try:
        conninfo_to_dict(strip_own_options(dsn)[0])
    except Exception as exc:  # psycopg.ProgrammingError; keep whatever libpq said
        return scrub_secrets_of(dsn, str(exc).strip()) or type(exc).__name__
    return None


def split_hosts(hosts: str | list[str] | tuple[str, ...]) -> list[str]:
    """Turn a comma-separated DSN list, a libpq multi-host URL or a list of either into one
    DSN per host (so ``--hosts a b`` and ``--hosts a,b`` mean the same)."""
    if not isinstance(hosts, str):
        return [dsn for value in hosts if value for dsn in split_hosts(value)]
    raw = hosts.strip()
    if not raw:
        return []
    # a multi-host URL or conninfo stays one part: its commas start no new DSN
    parts = [p.strip() for p in _split_top_level_commas(raw) if p.strip()]
    out: list[str] = []
    for p in parts:
        base, own = strip_own_options(p)
        if _is_multihost(base):
            out.extend(with_own_options(d, own) for d in expand_multihost(base))
        else:
            out.append(p)
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
        params = conninfo_to_dict(strip_own_options(dsn)[0])
    except Exception:
        return "<invalid dsn>"
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    if host.startswith("/"):
        return f"{host}:{port}"
    return f"{host}:{port}"


def redact(dsn: str) -> str:
    """The DSN with any password replaced by ``***``."""
    base, own = strip_own_options(dsn)
    try:
        params = conninfo_to_dict(base)
    except Exception:
        return "<invalid dsn>"
    if "password" in params:
        params["password"] = "***"
    return with_own_options(make_conninfo("", **params), own)


def check_patroni_url(url: str) -> str | None:
    """What is wrong with a Patroni REST URL, or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "give an http:// or https:// URL of a member's REST API"
    if parts.username or parts.password:
        return "give it without credentials (GET /cluster needs none)"
    return None
