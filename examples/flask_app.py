"""A Flask app: sync views on a threaded server, agents with history in pgsessions.

    PGSESSIONS_HOSTS=postgresql://app@db1/agents,postgresql://app@db2/agents \
        flask --app examples/flask_app.py run --with-threads

Each view calls ``Runner.run_sync`` in its own request thread. The router is started once
per process (a loop thread of its own, ``SessionRouter.start``); after a fork (gunicorn
``--preload``) the inherited one reports itself closed and the child starts its own.
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

from agents import Runner
from flask import Flask, jsonify, request
from scripted import make_agent

from pgsessions import PostgresSession, RouterConfig, SessionRouter, migrate

_router: SessionRouter | None = None
_lock = threading.Lock()


def router() -> SessionRouter:
    """This process's router, started at first use (and again in a forked child)."""
    global _router
    with _lock:
        if _router is None or _router.closed:
            _router = SessionRouter.start(RouterConfig.from_env())
            _router.run_sync(migrate(_router))  # idempotent; usually a deploy step
            atexit.register(_router.stop)
        return _router


app = Flask(__name__)


@app.post("/chat/<session_id>")
def chat(session_id: str) -> Any:
    message = str(request.get_json()["message"])
    session = PostgresSession(session_id, router())
    result = Runner.run_sync(make_agent(message), message, session=session)
    return jsonify(reply=result.final_output, consistency_token=session.consistency_token)


@app.get("/history/<session_id>")
def history(session_id: str) -> Any:
    r = router()
    items = r.run_sync(PostgresSession(session_id, r).get_items())
    return jsonify(items=items)


if __name__ == "__main__":
    import os

    app.run(port=int(os.environ.get("PORT", "8000")), threaded=True)
