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


# a key=value password: quoted, or up to the next "key=" (an unquoted space is a mistake
# whose tail could still be secret); in a URL query it may swallow the next parameters
_KV_PASSWORD = r"""('(?:[^'\\]|\\.)*'|\S*(?:\s+(?![\w.]+\s*=)\S+)*)"""
_KV_PASSWORD_RE = re.compile(r"password\s*=\s*" + _KV_PASSWORD, re.IGNORECASE)
_SECRET_RES = (
    re.compile(r"(password\s*=\s*)" + _KV_PASSWORD, re.IGNORECASE),
    # up to the LAST '@' before the next URL or line: a password may hold an unencoded '@'
    # (u:pw@rd@host) or space
    re.compile(r"(://[^:/@\s]*:)((?:(?!://)[^\n])*)(@)"),
)
_QUOTED_RE = re.compile(r'"[^"]*"|\'[^\']*\'')
_FRAGMENT_SPLIT_RE = re.compile(r"[@:/?#&\s]+")


def scrub(text: str) -> str:
    """``text`` with anything that looks like a password replaced by ``***`` (best effort,
    for DSNs that cannot be parsed and for their parse errors)."""
    for rx in _SECRET_RES:
        text = rx.sub(lambda m: m.group(1) + "***" + (m.group(3) if m.lastindex == 3 else ""), text)
    return text


def secrets_of(dsn: str) -> tuple[list[str], list[str]]:
    """What in ``dsn`` could be a password, however malformed: (whole candidates: in a URL
    everything between ``://`` and the last ``@``, each ``password=`` value; their pieces
    between ``@ : / ? # &`` and spaces), longest first."""
    found: list[str] = []
    if _URL_RE.match(dsn):
        rest = dsn.split("://", 1)[1]
        if "@" in rest:
            creds = rest[: rest.rfind("@")]
            found.append(creds)
            if ":" in creds:
                found.append(creds.split(":", 1)[1])
    for m in _KV_PASSWORD_RE.finditer(dsn):
        value = m.group(1)
        if value.startswith("'") and value.endswith("'") and len(value) >= 2:
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        found.append(value)
    pieces = {p for secret in found for p in _FRAGMENT_SPLIT_RE.split(secret) if p}
    return (
        sorted({s for s in found if s}, key=len, reverse=True),
        sorted(pieces, key=len, reverse=True),
    )


def scrub_secrets_of(dsn: str, text: str) -> str:
    """``text`` (e.g. libpq's parse error about ``dsn``) with whatever ``dsn`` could hold as
    a password replaced by ``***``: libpq quotes the offending token, which may be the
    password or a piece of it (``invalid percent-encoded token: "s3cr%t"``, a host name
    ``"rd@host"`` made of a password's tail). A quoted token holding any piece goes whole."""
    whole, pieces = secrets_of(dsn)

    def token(m: re.Match[str]) -> str:
        inner = m.group()[1:-1]
        return "***" if any(p in inner for p in pieces) else m.group()

    if pieces:
        text = _QUOTED_RE.sub(token, text)
    for secret in whole:
        text = text.replace(secret, "***")
    return scrub(text)


def ambiguous_url(dsn: str) -> str | None:
    """Why a URL DSN cannot be told apart from its password, or None.

    A well-formed URL has at most one unencoded ``@``, with no ``/`` before it. Anything
    else (``postgresql://u:pw@rd@host/db``, ``postgresql://u:p/w@host/db``) libpq splits
    where the password's own characters are, so a piece of the password would become the
    host, port or database name, and show in labels, logs and errors.
    """
    if not _URL_RE.match(dsn):
        return None
    rest = dsn.split("://", 1)[1]
    if rest.count("@") > 1:
        return "more than one '@' in the URL"
    if "@" in rest and "/" in rest[: rest.index("@")]:
        return "a '/' before the URL's '@'"
    return None


def shown(dsn: str) -> str:
    """``dsn`` as an error message may show it: URL credentials and passwords hidden, and
    nothing but the scheme of a URL that cannot be split safely (:func:`ambiguous_url`)."""
    if _URL_RE.match(dsn):
        scheme, rest = dsn.split("://", 1)
        if ambiguous_url(dsn) is not None:
            return f"{scheme}://***"
        if "@" in rest:
            rest = f"***@{rest[rest.rfind('@') + 1 :]}"
        return scrub_secrets_of(dsn, f"{scheme}://{rest}")
    return scrub_secrets_of(dsn, dsn)


def check_dsn(dsn: str) -> str | None:
    """None when libpq can parse ``dsn`` (without pgsessions' own options) unambiguously,
    else why not (never showing what could be a password)."""
    problem = ambiguous_url(dsn)
    if problem is not None:
        return (
            f"{problem}: percent-encode '@' as %40 and '/' as %2F in the user name, the "
            "password and the database name"
        )
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
        if ambiguous_url(base) is not None:
            out.append(p)  # left whole: check_dsn refuses it without splitting the password
        elif _is_multihost(base):
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
    """``host:port`` of a DSN: safe for logs and metric labels (no user, no password, and
    nothing of a malformed DSN that could be a piece of one)."""
    base = strip_own_options(dsn)[0]
    if ambiguous_url(base) is not None:
        return "<invalid dsn>"
    try:
        params = conninfo_to_dict(base)
    except Exception:
        return "<invalid dsn>"
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    if host.startswith("/"):
        return f"{host}:{port}"
    return f"{host}:{port}"


def redact(dsn: str) -> str:
    """The DSN with any password replaced by ``***`` (``<invalid dsn>`` when it cannot be
    parsed unambiguously)."""
    base, own = strip_own_options(dsn)
    if ambiguous_url(base) is not None:
        return "<invalid dsn>"
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
