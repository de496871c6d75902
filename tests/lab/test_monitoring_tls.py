"""The metrics endpoint over HTTPS with HTTP basic auth: real requests, real certificates."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from pgsessions.devcluster import LocalCluster
from pgsessions.devcluster.ports import pick_free_port
from pgsessions.devcluster.tls import issue_certificate, make_ca
from pgsessions.monitoring import serve
from pgsessions.monitoring.server import basic_auth_header, credentials_match
from pgsessions.router import SessionRouter

USER, PASSWORD = "prometheus", "scrape-Pw-7731"


@dataclass
class Certs:
    ca: Path
    cert: Path
    key: Path
    other_ca: Path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("metrics-tls")
    ca, ca_key = make_ca(d)
    cert, key = issue_certificate(d, "metrics", ca_cert=ca, ca_key=ca_key)
    other, _ = make_ca(d / "other")
    return Certs(ca, cert, key, other)


def get(
    port: int,
    path: str = "/metrics",
    *,
    ca: Path | None,
    auth: tuple[str, str] | None = None,
    host: str = "127.0.0.1",
) -> tuple[int, bytes, http.client.HTTPMessage]:
    """One GET: HTTPS verified against ``ca`` (plain HTTP when ``ca`` is None)."""
    if ca is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection(host, port, timeout=5)
    else:
        ctx = ssl.create_default_context(cafile=str(ca))
        conn = http.client.HTTPSConnection(host, port, timeout=5, context=ctx)
    headers = {"Authorization": basic_auth_header(*auth)} if auth else {}
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read(), resp.headers
    finally:
        conn.close()


def test_credentials_match_only_the_exact_pair() -> None:
    expected = f"{USER}:{PASSWORD}".encode()
    assert credentials_match(basic_auth_header(USER, PASSWORD), expected)
    assert credentials_match("basic " + basic_auth_header(USER, PASSWORD)[6:], expected)
    for header in (
        None,
        "",
        basic_auth_header(USER, PASSWORD + "x"),
        basic_auth_header(USER + "x", PASSWORD),
        basic_auth_header(USER, ""),
        "Bearer " + basic_auth_header(USER, PASSWORD)[6:],
        "Basic not!base64",
    ):
        assert not credentials_match(header, expected), header


async def test_https_with_basic_auth(router: SessionRouter, certs: Certs) -> None:
    with serve(
        router,
        port=0,
        registry=CollectorRegistry(),
        certfile=certs.cert,
        keyfile=certs.key,
        basic_auth=(USER, PASSWORD),
    ) as server:
        assert server.host == "127.0.0.1" and server.url.startswith("https://127.0.0.1:")
        port = server.port

        def requests() -> None:
            status, body, _ = get(port, ca=certs.ca, auth=(USER, PASSWORD))
            assert status == 200 and b"pgsessions_host_up{" in body
            assert get(port, "/healthz", ca=certs.ca, auth=(USER, PASSWORD))[0] == 200
            # the certificate names localhost too
            assert get(port, ca=certs.ca, auth=(USER, PASSWORD), host="localhost")[0] == 200
            for auth in (None, (USER, "wrong"), ("someone", PASSWORD)):
                for path in ("/metrics", "/healthz"):
                    status, body, headers = get(port, path, ca=certs.ca, auth=auth)
                    assert status == 401, (auth, path)
                    assert headers["WWW-Authenticate"].startswith("Basic realm=")
                    assert b"pgsessions_" not in body
            # plain HTTP to the TLS port gets no answer at all
            with pytest.raises((http.client.HTTPException, OSError)):
                get(port, ca=None, auth=(USER, PASSWORD))
            # a client that does not trust the certificate's CA refuses it
            with pytest.raises(ssl.SSLCertVerificationError):
                get(port, ca=certs.other_ca, auth=(USER, PASSWORD))
            # and the server still serves after those failed handshakes
            assert get(port, ca=certs.ca, auth=(USER, PASSWORD))[0] == 200

        await asyncio.to_thread(requests)


async def test_https_without_auth_and_auth_without_https(
    router: SessionRouter, certs: Certs
) -> None:
    with serve(
        router, port=0, registry=CollectorRegistry(), certfile=certs.cert, keyfile=certs.key
    ) as s:
        assert (await asyncio.to_thread(get, s.port, ca=certs.ca))[0] == 200
    with serve(router, port=0, registry=CollectorRegistry(), basic_auth=(USER, PASSWORD)) as s:
        assert s.url.startswith("http://")
        assert (await asyncio.to_thread(get, s.port, ca=None))[0] == 401
        assert (await asyncio.to_thread(get, s.port, ca=None, auth=(USER, PASSWORD)))[0] == 200
    with pytest.raises(ValueError, match="basic_auth"):
        serve(router, port=0, registry=CollectorRegistry(), basic_auth=(USER, ""))
    with pytest.raises(ssl.SSLError):
        serve(router, port=0, registry=CollectorRegistry(), certfile=certs.ca, keyfile=certs.key)


def serve_metrics_cli(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pgsessions", "serve-metrics", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_cli_serves_https_with_basic_auth(
    cluster: LocalCluster, certs: Certs, tmp_path: Path
) -> None:
    pwfile = tmp_path / "metrics-password"
    pwfile.write_text(PASSWORD + "\n")
    pwfile.chmod(0o600)
    port = pick_free_port()
    env = {**os.environ, "PGSESSIONS_HOSTS": ""}
    env.pop("PGSESSIONS_METRICS_PASSWORD", None)
    proc = serve_metrics_cli(
        *("--hosts", *cluster.dsns(), "--port", str(port)),
        *("--tls-cert", str(certs.cert), "--tls-key", str(certs.key)),
        *("--basic-auth-user", USER, "--basic-auth-password-file", str(pwfile)),
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body, _ = get(port, ca=certs.ca, auth=(USER, PASSWORD))
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "serve-metrics never answered"
                time.sleep(0.1)
        assert status == 200 and b"pgsessions_host_up{" in body
        assert get(port, ca=certs.ca)[0] == 401
        assert get(port, ca=certs.ca, auth=(USER, "nope"))[0] == 401
        with pytest.raises((http.client.HTTPException, OSError)):
            get(port, ca=None)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert f"https://127.0.0.1:{port}/metrics" in out
        assert PASSWORD not in out + err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--basic-auth-user", USER], "PGSESSIONS_METRICS_PASSWORD"),
        (["--basic-auth-password-file", "/nonexistent"], "needs --basic-auth-user"),
        (
            ["--basic-auth-user", USER, "--basic-auth-password-file", "/nonexistent/pw"],
            "No such file",
        ),
        (["--tls-key", "/nonexistent/key.pem"], "--tls-key needs --tls-cert"),
    ],
)
def test_cli_refuses_incomplete_options(args: list[str], message: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PGSESSIONS_METRICS_PASSWORD"}
    proc = serve_metrics_cli("--hosts", "postgresql://127.0.0.1:1/x", *args, env=env)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and message in err, (out, err)
