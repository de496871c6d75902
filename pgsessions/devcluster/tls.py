"""TLS and passwords for the local cluster (``LocalCluster(tls=True)``, ``cluster up --tls``).

A CA of the cluster's own signs one server certificate per node (SAN ``IP:127.0.0.1`` and
``DNS:localhost``), made with the ``openssl`` command (PostgreSQL's packages depend on it, so
no Python dependency is added). ``pg_hba.conf`` then accepts only TLS connections
authenticated by a SCRAM password, for every role and for replication. The superuser's
password lives in a passfile (libpq's ``PGPASSFILE`` format); DSNs carry
``sslmode=verify-full`` and ``sslrootcert`` but never the password.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .binaries import chown_to_server_user
from .errors import ClusterError

TLS_DIR = "tls"
#: pg_hba.conf of a TLS cluster: nothing in clear text, no trust, SCRAM for every role
HBA = """\
# pgsessions devcluster --tls: TLS and a SCRAM password for every role, replication included
hostssl all         all 127.0.0.1/32 scram-sha-256
hostssl replication all 127.0.0.1/32 scram-sha-256
"""
DAYS = 30

_CA_CONFIG = """\
[req]
distinguished_name = dn
x509_extensions = ca
prompt = no
[dn]
CN = pgsessions devcluster CA
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
"""

_REQ_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = {cn}
"""

_SERVER_EXT = """\
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = {san}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""

_EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(cwd: Path, *args: str) -> None:
    try:
        proc = subprocess.run(
            ["openssl", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "OPENSSL_CONF": "/dev/null"},
        )
    except FileNotFoundError:
        raise ClusterError(
            "the openssl command is needed for a TLS cluster (apt-get install openssl)"
        ) from None
    if proc.returncode != 0:
        raise ClusterError(f"openssl {args[0]} failed: {proc.stderr.strip()[-1000:]}")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def make_ca(directory: Path) -> tuple[Path, Path]:
    """A self-signed CA (EC P-256, valid ``DAYS`` days) in ``directory``: (cert, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.cnf").write_text(_CA_CONFIG)
    _openssl(
        directory,
        *("req", "-x509", "-new", *_EC_KEY, "-config", "ca.cnf", "-days", str(DAYS)),
        *("-keyout", "ca.key", "-out", "ca.crt"),
    )
    (directory / "ca.key").chmod(0o600)
    (directory / "ca.crt").chmod(0o644)
    (directory / "ca.cnf").unlink()
    return directory / "ca.crt", directory / "ca.key"


def issue_certificate(
    directory: Path,
    name: str,
    *,
    ca_cert: Path,
    ca_key: Path,
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
) -> tuple[Path, Path]:
    """A server certificate for ``hosts`` (IP or DNS SANs) signed by the CA: (cert, key),
    written as ``name.crt`` and ``name.key`` (mode 0600) in ``directory``."""
    san = ",".join(f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in hosts)
    (directory / f"{name}.req.cnf").write_text(_REQ_CONFIG.format(cn=hosts[-1]))
    (directory / f"{name}.ext.cnf").write_text(_SERVER_EXT.format(san=san))
    try:
        _openssl(
            directory,
            *("req", "-new", *_EC_KEY, "-config", f"{name}.req.cnf"),
            *("-keyout", f"{name}.key", "-out", f"{name}.csr"),
        )
        (directory / f"{name}.key").chmod(0o600)
        serial = "0x" + secrets.token_hex(16)
        _openssl(
            directory,
            *("x509", "-req", "-in", f"{name}.csr", "-CA", str(ca_cert), "-CAkey", str(ca_key)),
            *("-set_serial", serial, "-days", str(DAYS), "-sha256"),
            *("-extfile", f"{name}.ext.cnf", "-extensions", "server", "-out", f"{name}.crt"),
        )
    finally:
        for suffix in (".req.cnf", ".ext.cnf", ".csr"):
            (directory / f"{name}{suffix}").unlink(missing_ok=True)
    return directory / f"{name}.crt", directory / f"{name}.key"


def _escape(field: str) -> str:
    return field.replace("\\", "\\\\").replace(":", "\\:")


def _fields(line: str) -> list[str]:
    """The ':'-separated fields of a passfile line (backslash escapes)."""
    fields: list[str] = []
    cur: list[str] = []
    chars = iter(line)
    for c in chars:
        if c == "\\":
            cur.append(next(chars, ""))
        elif c == ":":
            fields.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    fields.append("".join(cur))
    return fields


def passfile_lines(user: str, password: str) -> str:
    """Passfile entries for ``user`` on every local port and database (replication too)."""
    if "\n" in password or "\r" in password or not password:
        raise ClusterError("the cluster password must be one non-empty line")
    return "".join(
        f"{host}:*:*:{_escape(user)}:{_escape(password)}\n" for host in ("127.0.0.1", "localhost")
    )


@dataclass(frozen=True)
class ClusterTls:
    """The TLS files of one cluster, under ``directory`` (``<cluster dir>/tls``)."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def passfile(self) -> Path:
        """The superuser's password in libpq's passfile format (use as ``PGPASSFILE``)."""
        return self.directory / "pgpass"

    def server_cert(self, node: str) -> Path:
        return self.directory / f"{node}.crt"

    def server_key(self, node: str) -> Path:
        return self.directory / f"{node}.key"

    def client_params(self) -> dict[str, str]:
        """Connection parameters a client needs: verify the server against the CA."""
        return {"sslmode": "verify-full", "sslrootcert": str(self.ca_cert)}

    def server_settings(self, node: str) -> list[str]:
        """postgresql.conf lines of ``node``: TLS with its own certificate, SCRAM hashes."""
        return [
            "ssl = on",
            f"ssl_cert_file = '{self.server_cert(node)}'",
            f"ssl_key_file = '{self.server_key(node)}'",
            "ssl_min_protocol_version = 'TLSv1.2'",
            "password_encryption = 'scram-sha-256'",
        ]

    def password(self) -> str:
        """The superuser's password, read back from the passfile."""
        return _fields(self.passfile.read_text().splitlines()[0])[4]

    def __repr__(self) -> str:
        return f"ClusterTls({str(self.directory)!r})"

    @classmethod
    def create(
        cls, directory: Path, nodes: list[str], *, user: str, password: str | None
    ) -> ClusterTls:
        """Make the CA, a certificate per node name and the passfile (``password``, or a
        random one). Keys and passfile are readable by the server user only."""
        tls = cls(directory)
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)
        make_ca(directory)
        for node in nodes:
            tls.add_node(node)
        tls.passfile.touch(mode=0o600)
        tls.passfile.chmod(0o600)
        tls.passfile.write_text(passfile_lines(user, password or secrets.token_urlsafe(24)))
        # the walreceiver and pg_basebackup (the server user) read it too; root reads anyway
        chown_to_server_user(tls.passfile)
        return tls

    def add_node(self, node: str) -> None:
        """A certificate and key for ``node`` (the key owned by the server user)."""
        issue_certificate(self.directory, node, ca_cert=self.ca_cert, ca_key=self.ca_key)
        chown_to_server_user(self.server_key(node))

    def write_pwfile(self) -> Path:
        """The password alone in a file the server user can read (initdb --pwfile); the
        caller deletes it."""
        path = self.directory / "initdb.pw"
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(self.password() + "\n")
        chown_to_server_user(path)
        return path
