"""`pgsessions serve-metrics`: a router over the cluster, with /metrics and /healthz served."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..router.settings import count, flag
from .common import add_hosts_arguments, fail, run_on_router

if TYPE_CHECKING:
    from ..router.protocol import Router

#: where ``--basic-auth-user``'s password comes from when no ``--basic-auth-password-file``
PASSWORD_ENV = "PGSESSIONS_METRICS_PASSWORD"


def add_serve_metrics_command(subparsers: Any) -> None:
    """Add ``serve-metrics [--hosts DSN ... | --local] [--host 127.0.0.1] [--port 9464]
    [--tls-cert PEM [--tls-key PEM]] [--basic-auth-user USER [--basic-auth-password-file F]]``."""
    p = subparsers.add_parser(
        "serve-metrics",
        help="serve Prometheus /metrics and /healthz for a router over the cluster",
        description="Open a router over the cluster and serve /metrics and /healthz until "
        "interrupted. Hosts: --hosts, else PGSESSIONS_HOSTS, else every shard of "
        "PGSESSIONS_SHARDS (each shard's series labelled with its name), "
        "else (only with --local) the local cluster.",
    )
    add_hosts_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port", type=flag(count(0, 65535)), default=9464, help="port to listen on (default 9464)"
    )
    p.add_argument(
        "--name",
        default="default",
        help="router name label (default 'default'; on shards: each shard's name)",
    )
    p.add_argument(
        "--tls-cert", type=Path, metavar="PEM", help="serve HTTPS only, with this certificate"
    )
    p.add_argument(
        "--tls-key", type=Path, metavar="PEM", help="its private key (if not in --tls-cert)"
    )
    p.add_argument(
        "--basic-auth-user",
        metavar="USER",
        help=f"require HTTP basic auth as USER; the password comes from "
        f"--basic-auth-password-file or ${PASSWORD_ENV} (never from the command line)",
    )
    p.add_argument(
        "--basic-auth-password-file",
        type=Path,
        metavar="FILE",
        help="file holding the basic auth password (its first line)",
    )
    p.set_defaults(func=run_serve_metrics)


def basic_auth_from(args: argparse.Namespace) -> tuple[str, str] | None:
    """``(user, password)`` from the options and the environment; ValueError naming what
    is missing."""
    if args.basic_auth_user is None:
        if args.basic_auth_password_file is not None:
            raise ValueError("--basic-auth-password-file needs --basic-auth-user")
        return None
    if args.basic_auth_password_file is not None:
        try:
            lines = args.basic_auth_password_file.read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"--basic-auth-password-file: {exc.strerror}") from None
        password = lines[0] if lines else ""
        where = str(args.basic_auth_password_file)
    else:
        password = os.environ.get(PASSWORD_ENV, "")
        where = f"${PASSWORD_ENV}"
    if not password:
        raise ValueError(
            f"--basic-auth-user needs a password: none in {where} "
            f"(use --basic-auth-password-file FILE or set {PASSWORD_ENV})"
        )
    return args.basic_auth_user, password


def run_serve_metrics(args: argparse.Namespace) -> int:
    try:
        auth = basic_auth_from(args)
        if args.tls_key is not None and args.tls_cert is None:
            raise ValueError("--tls-key needs --tls-cert")
    except (ValueError, OSError) as exc:
        return fail("serve-metrics", exc)
    # ssl.SSLError (a bad certificate) is an OSError
    return run_on_router(
        "serve-metrics",
        args,
        lambda router: _serve(router, args, auth),
        errors=(OSError,),
        name=args.name,
    )


async def _serve(router: Router, args: argparse.Namespace, auth: tuple[str, str] | None) -> int:
    from ..monitoring.server import serve

    if auth is not None and args.tls_cert is None:
        print(
            "pgsessions serve-metrics: warning: basic auth without --tls-cert sends the "
            "password in clear text",
            file=sys.stderr,
        )
    server = serve(
        router,
        args.host,
        args.port,
        certfile=args.tls_cert,
        keyfile=args.tls_key,
        basic_auth=auth,
    )
    try:
        print(f"serving {server.url}/metrics and {server.url}/healthz (Ctrl-C stops)")
        sys.stdout.flush()
        await asyncio.Event().wait()
    finally:
        server.stop()
    return 0
