"""Free loopback ports for servers.

Ports come from below the ephemeral range (32768-60999): a port picked there can be taken a
moment later by a client socket in TIME_WAIT, and postgres then fails to bind it.
"""

from __future__ import annotations

import random
import socket

LOW, HIGH = 20000, 32000


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) != 0


def pick_free_port(exclude: set[int] | None = None) -> int:
    exclude = exclude or set()
    rng = random.SystemRandom()
    for _ in range(500):
        port = rng.randrange(LOW, HIGH)
        if port not in exclude and port_is_free(port):
            return port
    raise RuntimeError(f"no free port found between {LOW} and {HIGH}")
