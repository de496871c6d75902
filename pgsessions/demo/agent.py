"""The demo's agent: a support assistant with two tools, driven by an offline scripted model.

Each turn gets its own :class:`agents.testing.ScriptedModel`: about half of the turns call a
tool first (so the history holds function calls and their outputs), every model call takes
a little time and reports token usage, and the texts have realistic sizes.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

from agents import Agent, function_tool
from agents.testing import ModelStep, ScriptedModel, assistant_message, function_call
from agents.testing.model import ModelCall
from agents.usage import Usage

INSTRUCTIONS = (
    "You are the support assistant of an online shop. Look orders up before answering "
    "questions about them, and cite the documentation when you explain a policy."
)

_WORDS = (
    "order parcel refund delivery warehouse invoice customer payment address courier "
    "tracking return policy item account support week business days label carrier status "
    "replacement warranty exchange receipt discount shipment express standard update"
).split()
_QUESTIONS = (
    "Where is my order {order}? It was supposed to arrive on Monday.",
    "Can I return the shoes from order {order} if I already wore them once?",
    "I was charged twice for order {order}, can you check the payment?",
    "What is your policy for damaged items? The box of {order} was crushed.",
    "Please change the delivery address of {order} to my office.",
    "How long does a refund take once the courier has picked up the parcel?",
)


def _prose(rng: random.Random, min_chars: int, max_chars: int) -> str:
    target = rng.randint(min_chars, max_chars)
    words: list[str] = []
    size = 0
    while size < target:
        w = rng.choice(_WORDS)
        words.append(w)
        size += len(w) + 1
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


@function_tool
def lookup_order(order_id: str) -> str:
    """Look an order up by its id: status, items, carrier and tracking events."""
    rng = random.Random(order_id)
    return json.dumps(
        {
            "order_id": order_id,
            "status": rng.choice(["processing", "shipped", "in transit", "delivered"]),
            "carrier": rng.choice(["DHL", "UPS", "La Poste", "GLS"]),
            "items": [
                {"sku": f"SKU-{rng.randint(1000, 9999)}", "qty": rng.randint(1, 3)}
                for _ in range(rng.randint(1, 4))
            ],
            "events": [
                {"at": f"2025-06-{d:02d}T{rng.randint(6, 20):02d}:00Z", "what": _prose(rng, 20, 60)}
                for d in range(1, rng.randint(3, 7))
            ],
        }
    )


@function_tool
def search_docs(query: str) -> str:
    """Search the shop's help center; returns the best matching passages."""
    rng = random.Random(query)
    return json.dumps(
        [{"title": _prose(rng, 10, 30), "passage": _prose(rng, 150, 400)} for _ in range(2)]
    )


def build_agent(model: str | None = None) -> Agent[Any]:
    """The demo agent (``model`` is a real model name, or None for the scripted one)."""
    return Agent(
        name="Support",
        instructions=INSTRUCTIONS,
        tools=[lookup_order, search_docs],
        model=model,
    )


def user_message(rng: random.Random) -> str:
    order = f"A{rng.randint(100000, 999999)}"
    return rng.choice(_QUESTIONS).format(order=order) + " " + _prose(rng, 20, 200)


def _usage(rng: random.Random, call: ModelCall) -> Usage:
    history = call.input if isinstance(call.input, list) else [call.input]
    # about 4 characters a token, like the real thing
    input_tokens = max(1, len(json.dumps(history, default=str)) // 4)
    output_tokens = rng.randint(40, 320)
    return Usage(
        requests=1,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=input_tokens + output_tokens,
    )


def scripted_turn(rng: random.Random, latency: tuple[float, float]) -> ScriptedModel:
    """The model for one turn: maybe a tool call, then an answer; each call takes a while."""
    calls_tool = rng.random() < 0.5
    turn_id = f"{rng.getrandbits(48):012x}"

    async def tool_step(call: ModelCall) -> ModelStep:
        await asyncio.sleep(rng.uniform(*latency))
        if rng.random() < 0.6:
            name, args = "lookup_order", {"order_id": f"A{rng.randint(100000, 999999)}"}
        else:
            name, args = "search_docs", {"query": _prose(rng, 10, 40)}
        return ModelStep(
            output=[function_call(name, args, call_id=f"call_{turn_id}")],
            usage=_usage(rng, call),
        )

    async def answer_step(call: ModelCall) -> ModelStep:
        await asyncio.sleep(rng.uniform(*latency))
        return ModelStep(
            output=[assistant_message(_prose(rng, 200, 1400), item_id=f"msg_{turn_id}")],
            usage=_usage(rng, call),
        )

    steps = [ModelStep.respond(tool_step)] if calls_tool else []
    steps.append(ModelStep.respond(answer_step))
    return ScriptedModel(steps)
