"""Usage logs: turning a run's usage into a row and rows back into the SDK's dict shapes."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .limits import check_depth, check_text, value_depth

if TYPE_CHECKING:
    from agents.result import RunResultBase

UsageParams = tuple[str | None, int, int, int, int, str | None, str | None]


def _details(what: str, value: Any) -> str | None:
    if value is None:
        return None
    dump = getattr(value, "model_dump", None)
    data = dump() if callable(dump) else dict(vars(value))
    try:
        text = json.dumps(data, default=str)
    except RecursionError:
        check_depth(what, value_depth(data))
        raise
    return check_text(what, text)


def _model_name(result: RunResultBase) -> str | None:
    agent = getattr(result, "last_agent", None)
    model = getattr(agent, "model", None)
    if isinstance(model, str):
        return model
    name = getattr(model, "model", None)
    return name if isinstance(name, str) else None


def usage_params(result: RunResultBase) -> UsageParams | None:
    """(model, requests, input, output, total, input details, output details) or None."""
    usage = result.context_wrapper.usage
    if usage is None:
        return None
    return (
        _model_name(result),
        usage.requests or 0,
        usage.input_tokens or 0,
        usage.output_tokens or 0,
        usage.total_tokens or 0,
        _details("usage input_tokens_details", usage.input_tokens_details),
        _details("usage output_tokens_details", usage.output_tokens_details),
    )


def session_usage(rows: list[tuple[Any, ...]]) -> dict[str, int] | None:
    if not rows or not rows[0][4]:
        return None
    requests, input_tokens, output_tokens, total_tokens, turns = rows[0]
    return {
        "requests": requests or 0,
        "input_tokens": input_tokens or 0,
        "output_tokens": output_tokens or 0,
        "total_tokens": total_tokens or 0,
        "total_turns": turns or 0,
    }


def one_turn(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    if not rows:
        return {}
    requests, input_tokens, output_tokens, total_tokens, in_details, out_details = rows[0]
    return {
        "requests": requests,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": total_tokens,
        "input_tokens_details": in_details,
        "output_tokens_details": out_details,
    }


def all_turns(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    return [{"user_turn_number": row[0], **one_turn([row[1:]])} for row in rows]
