"""A FastAPI app: the lifespan opens the router; async endpoints and a sync one.

    PGSESSIONS_HOSTS=postgresql://app@db1/agents,postgresql://app@db2/agents \
        uvicorn --app-dir examples fastapi_app:app

Async endpoints run on the server's loop, the router's owner: calls take the direct path.
FastAPI runs a plain ``def`` endpoint in a worker thread, where ``Runner.run_sync`` makes a
loop of its own; the router serves it from its loop thread.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from agents import Runner
from fastapi import FastAPI, Request
from pydantic import BaseModel
from scripted import make_agent

from pgsessions import PostgresSession, RouterConfig, SessionRouter, migrate


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with SessionRouter(RouterConfig.from_env()) as router:
        await migrate(router)  # idempotent; usually a deploy step
        app.state.router = router
        yield


app = FastAPI(lifespan=lifespan)


class Message(BaseModel):
    message: str


@app.post("/chat/{session_id}")
async def chat(session_id: str, body: Message, request: Request) -> dict[str, Any]:
    session = PostgresSession(session_id, request.app.state.router)
    result = await Runner.run(make_agent(body.message), body.message, session=session)
    return {"reply": result.final_output, "consistency_token": session.consistency_token}


@app.post("/sync-chat/{session_id}")
def sync_chat(session_id: str, body: Message, request: Request) -> dict[str, Any]:
    session = PostgresSession(session_id, request.app.state.router)
    result = Runner.run_sync(make_agent(body.message), body.message, session=session)
    return {"reply": result.final_output, "consistency_token": session.consistency_token}


@app.get("/history/{session_id}")
async def history(session_id: str, request: Request) -> dict[str, Any]:
    items = await PostgresSession(session_id, request.app.state.router).get_items()
    return {"items": items}
