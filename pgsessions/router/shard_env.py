"""The shards of a sharded set-up from the environment (pure parsing).

``PGSESSIONS_SHARDS="s1=dsn1,dsn2;s2=dsn3,dsn4"``: shards separated by ``;``, each a name
(letters, digits, ``_``, ``-``), ``=``, and its hosts as ``PGSESSIONS_HOSTS`` takes them
(comma-separated DSNs, or one libpq multi-host URL). A DSN holding ``;`` must be a URL with
it percent-encoded (``%3B``). ``PGSESSIONS_BUCKETS`` sets the bucket count (default 1024).
"""

from __future__ import annotations

from .dsn import scrub, split_hosts
from .shard_tokens import SHARD_NAME


def parse_shards(text: str) -> dict[str, list[str]]:
    """``{name: [dsn, ...]}`` of a ``PGSESSIONS_SHARDS`` value; ValueError naming the part
    (passwords redacted)."""
    out: dict[str, list[str]] = {}
    for i, part in enumerate(p.strip() for p in text.split(";")):
        if not part:
            continue
        name, sep, hosts = part.partition("=")
        name = name.strip()
        if not sep or not SHARD_NAME.match(name):
            raise ValueError(
                f"PGSESSIONS_SHARDS part {i + 1} ({scrub(part)!r}) is not NAME=DSN[,DSN...] "
                "with a NAME of letters, digits, '_' or '-'"
            )
        if name in out:
            raise ValueError(f"PGSESSIONS_SHARDS names shard {name!r} twice")
        dsns = split_hosts(hosts)
        if not dsns:
            raise ValueError(f"PGSESSIONS_SHARDS: shard {name!r} has no hosts")
        out[name] = dsns
    if not out:
        raise ValueError('PGSESSIONS_SHARDS is empty: give "s1=dsn1,dsn2;s2=dsn3,dsn4"')
    return out


def render_shards(shards: dict[str, list[str]]) -> str:
    """The ``PGSESSIONS_SHARDS`` value of ``shards`` (the inverse of :func:`parse_shards`)."""
    return ";".join(f"{name}={','.join(dsns)}" for name, dsns in shards.items())
