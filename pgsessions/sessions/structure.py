"""Conversation structure as AdvancedSQLiteSession reports it: turns, item kinds, tool names.

Pure functions over a branch's items in order (no I/O), so the rules match the SDK's
``AdvancedSQLiteSession`` (0.24) exactly: an item's turn is the number of user items up to
and including it (0 before the first), its kind is ``user``/``assistant`` by role, else its
``type``, else ``other``; tool names follow ``_extract_tool_name``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

# the item types AdvancedSQLiteSession.get_tool_usage counts
TOOL_CALL_TYPES = frozenset(
    {
        "tool_call",
        "function_call",
        "computer_call",
        "file_search_call",
        "web_search_call",
        "code_interpreter_call",
        "tool_search_call",
        "custom_tool_call",
        "mcp_call",
        "mcp_approval_request",
        "shell_call",
        "apply_patch_call",
    }
)
_NAMED_BY_TYPE = frozenset(
    {
        "computer_call",
        "file_search_call",
        "web_search_call",
        "code_interpreter_call",
        "shell_call",
        "apply_patch_call",
    }
)

#: one stored row of a branch's view: (role, type, item, created_at text)
Row = Sequence[Any]


def is_user(item: Any) -> bool:
    return isinstance(item, dict) and item.get("role") == "user"


def message_type(item: Any) -> str:
    """The SDK's ``_classify_message_type``."""
    if isinstance(item, dict):
        if item.get("role") == "user":
            return "user"
        if item.get("role") == "assistant":
            return "assistant"
        if item.get("type"):
            return str(item.get("type"))
    return "other"


def tool_name(item: Any) -> str | None:
    """The SDK's ``_extract_tool_name``: ``server.name`` for MCP, the type for built-in tools,
    ``tool_search`` for tool search, else ``namespace.name`` (a namespace equal to the name is
    the SDK's synthetic top-level shape: the bare name)."""
    if not isinstance(item, dict):
        return None
    kind = item.get("type")
    if kind in {"mcp_call", "mcp_approval_request"} and "server_label" in item:
        label, name = item.get("server_label"), item.get("name")
        if name and label:
            return f"{label}.{name}"
        if label:
            return str(label)
        return str(name) if name else None
    if kind in {"tool_search_call", "tool_search_output"}:
        return "tool_search"
    if kind in _NAMED_BY_TYPE:
        return str(kind)
    if "name" in item:
        name = item.get("name")
        if name is None:
            return None
        text = str(name)
        namespace = item.get("namespace")
        space = str(namespace) if namespace is not None else None
        if space and text and space != text:
            return f"{space}.{text}"
        return text
    return None


def by_turns(rows: Iterable[Row]) -> dict[int, list[dict[str, str | None]]]:
    """``get_conversation_by_turns``: turn -> [{"type", "tool_name"}, ...] in order."""
    turns: dict[int, list[dict[str, str | None]]] = {}
    turn = 0
    for _role, _type, item, _at in rows:
        if is_user(item):
            turn += 1
        turns.setdefault(turn, []).append(
            {"type": message_type(item), "tool_name": tool_name(item)}
        )
    return turns


def tool_usage(rows: Iterable[Row]) -> list[tuple[str, int, int]]:
    """``get_tool_usage``: (tool name, uses, turn) per tool and turn, in turn order. A
    ``tool_search_output`` counts only in a turn without a ``tool_search_call``."""
    counts: dict[tuple[Any, int], int] = {}
    searched: set[int] = set()
    outputs: list[int] = []
    turn = 0
    for _role, _type, item, _at in rows:
        if is_user(item):
            turn += 1
        kind = message_type(item)
        if kind in TOOL_CALL_TYPES:
            name = tool_name(item)
            if name is None and kind in {"shell_call", "apply_patch_call"}:
                name = kind
            counts[(name, turn)] = counts.get((name, turn), 0) + 1
            if kind == "tool_search_call":
                searched.add(turn)
        elif kind == "tool_search_output":
            outputs.append(turn)
    for turn in outputs:
        if turn not in searched:
            key = ("tool_search", turn)
            counts[key] = counts.get(key, 0) + 1
    ordered = sorted(counts.items(), key=lambda kv: kv[0][1])
    return [(name, n, t) for (name, t), n in ordered]


def _preview(content: Any, max_length: int | None = None) -> str:
    text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
    if max_length is not None and len(text) > max_length:
        return text[:max_length] + "..."
    return text


def user_turns(rows: Iterable[Row], max_length: int | None = 100) -> list[dict[str, Any]]:
    """``get_conversation_turns`` from a branch's user items in order."""
    turns: list[dict[str, Any]] = []
    for number, (_role, _type, item, created_at) in enumerate(rows, start=1):
        if not isinstance(item, dict):
            continue
        content = item.get("content", "")
        turns.append(
            {
                "turn": number,
                "content": _preview(content, max_length),
                "full_content": content,
                "timestamp": created_at,
                "can_branch": True,
            }
        )
    return turns


def matching_turns(rows: Iterable[Row], search_term: str) -> list[dict[str, Any]]:
    """``find_turns_by_content``: the user turns whose text contains ``search_term``, ASCII
    case-insensitively as SQLite's LIKE (the preview is the whole content)."""
    pattern = re.compile(re.escape(search_term), re.IGNORECASE | re.ASCII)
    found: list[dict[str, Any]] = []
    for turn in user_turns(rows, max_length=None):
        content = turn["full_content"]
        if isinstance(content, str):
            texts = [content]
        elif isinstance(content, list):
            texts = [p.get("text", "") for p in content if isinstance(p, dict)]
        else:
            continue
        if any(isinstance(t, str) and pattern.search(t) for t in texts):
            found.append(turn)
    return found
