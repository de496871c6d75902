"""The export format: one JSON object per line, a conversation line followed by its items,
usage rows and branches. Values that PostgreSQL stores as ``json`` or ``jsonb`` are carried
as raw JSON text (never parsed into Python floats), so an item comes back byte for byte.

Line kinds (keys in this order; ``item`` last on item lines)::

    {"kind": "header", "format": "pgsessions-export", "version": 1, ...}
    {"kind": "conversation", "session_id": ..., ["tenant": ...,] "created_at": ...,
     "updated_at": ...,
     "metadata": {...}, "next_seq": N, "item_count": n, "user_turns": u, "items": n,
     "usage_rows": k, "current_branch": ..., "branches": b}
                                             (tenant: only from schemas that record tenants)
    {"kind": "item", "session_id": ..., "seq": 1, "role": ..., "type": ..., "branch": ...,
     "created_at": ..., "item": <the stored JSON text>}
    {"kind": "usage", "session_id": ..., "branch": ..., "user_turn_number": 1, "model": ...,
     "requests": ..., "input_tokens": ..., "output_tokens": ..., "total_tokens": ...,
     "input_tokens_details": ..., "output_tokens_details": ..., "created_at": ...}
    {"kind": "branch", "session_id": ..., "branch_id": ..., "parent_id": ..., "from_turn": t,
     "anc": [...], "upto": [...], "created_at": ..., "deleted_at": ...}

Version 2 added the branches (migration 0010): ``branch`` (default ``main``),
``current_branch`` and the branch lines. Version 1 files read as one branch, ``main``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any

from ..errors import ExportFormatError
from ..sessions.limits import MAX_DEPTH, check_text

FORMAT = "pgsessions-export"
VERSION = 2
#: versions read_export accepts
READABLE = (1, 2)

_decoder = json.JSONDecoder()
_WS = " \t\n\r"


@dataclass
class ItemRecord:
    seq: int
    item: str  #: the item's JSON text, exactly as stored
    role: str | None = None
    type: str | None = None
    created_at: str | None = None
    #: the branch that stores it (migration 0010)
    branch: str = "main"


@dataclass
class BranchRecord:
    """A branch: its view is its own items plus, for each ancestor ``anc[i]``, that branch's
    items with seq <= ``upto[i]`` (see migration 0010); ``deleted_at`` marks a tombstone."""

    branch_id: str
    parent_id: str
    from_turn: int
    anc: list[str]
    upto: list[int]
    created_at: str | None = None
    deleted_at: str | None = None


@dataclass
class UsageRecord:
    user_turn_number: int
    model: str | None
    requests: int
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: str | None = None  #: JSON text or None
    output_tokens_details: str | None = None
    created_at: str | None = None
    branch: str = "main"


@dataclass
class ConversationRecord:
    """One conversation with its items (in ``seq`` order) and usage rows."""

    session_id: str
    metadata: str = "{}"  #: JSON object text
    #: the tenant that owns it (schemas with tenant isolation, migration 0006); None: none
    tenant: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    next_seq: int | None = None
    user_turns: int | None = None
    items: list[ItemRecord] = field(default_factory=list)
    usage: list[UsageRecord] = field(default_factory=list)
    current_branch: str = "main"
    branches: list[BranchRecord] = field(default_factory=list)
    #: why this conversation cannot be imported (set by a source that could not read it)
    error: str | None = None

    def checked(self) -> ConversationRecord:
        """Self, after checking that seqs increase (per branch), fit under ``next_seq``, and
        that the branches named exist."""
        lasts: dict[str, int] = {}
        for it in self.items:
            before = lasts.get(it.branch, 0)
            if it.seq <= before:
                raise ExportFormatError(
                    f"conversation {self.session_id!r}: item seq {it.seq} after {before} "
                    f"in branch {it.branch!r} (seqs must increase)"
                )
            lasts[it.branch] = it.seq
        last = max(lasts.values(), default=0)
        known = {"main"} | {b.branch_id for b in self.branches}
        for b in self.branches:
            if len(b.anc) != len(b.upto) or not set(b.anc) <= known:
                raise ExportFormatError(
                    f"conversation {self.session_id!r}: branch {b.branch_id!r} names unknown "
                    "ancestors or has unmatched bounds"
                )
        named = {it.branch for it in self.items} | {u.branch for u in self.usage}
        if not named | {self.current_branch} <= known:
            raise ExportFormatError(
                f"conversation {self.session_id!r}: items, usage or current_branch name a "
                "branch without a branch line"
            )
        if self.next_seq is None:
            self.next_seq = last + 1
        elif self.next_seq <= last:
            raise ExportFormatError(
                f"conversation {self.session_id!r}: next_seq {self.next_seq} <= last seq {last}"
            )
        if self.user_turns is None:
            self.user_turns = sum(1 for it in self.items if it.role == "user")
        return self


def raw_fields(line: str) -> dict[str, str]:
    """The top-level members of a JSON object line as raw JSON value texts (not parsed).

    Raises ValueError when ``line`` is not one JSON object.
    """
    i = _skip(line, 0)
    if i >= len(line) or line[i] != "{":
        raise ValueError("not a JSON object")
    out: dict[str, str] = {}
    i = _skip(line, i + 1)
    if i < len(line) and line[i] == "}":
        return _end(line, i + 1, out)
    while True:
        if i >= len(line) or line[i] != '"':
            raise ValueError(f"expected a key at column {i + 1}")
        key, i = scanstring(line, i + 1)
        i = _skip(line, i)
        if i >= len(line) or line[i] != ":":
            raise ValueError(f"expected ':' at column {i + 1}")
        i = _skip(line, i + 1)
        _, end = _decoder.raw_decode(line, i)  # validates the value, finds its end
        out[key] = line[i:end]
        i = _skip(line, end)
        if i < len(line) and line[i] == ",":
            i = _skip(line, i + 1)
            continue
        if i < len(line) and line[i] == "}":
            return _end(line, i + 1, out)
        raise ValueError(f"expected ',' or '}}' at column {i + 1}")


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _end(line: str, i: int, out: dict[str, str]) -> dict[str, str]:
    if _skip(line, i) != len(line):
        raise ValueError("text after the JSON object")
    return out


def _value(raw: dict[str, str], key: str, kinds: tuple[type, ...], lineno: int) -> Any:
    if key not in raw:
        raise ExportFormatError(f"line {lineno}: missing {key!r}")
    value = json.loads(raw[key])
    if (value is not None and not isinstance(value, kinds)) or isinstance(value, bool):
        raise ExportFormatError(f"line {lineno}: {key!r} has the wrong type: {raw[key][:60]}")
    return value


def _optional(raw: dict[str, str], key: str, lineno: int) -> Any:
    """A string member that older versions of the format lack (None when absent)."""
    return _value(raw, key, (str,), lineno) if key in raw else None


def _json_or_none(raw: dict[str, str], key: str) -> str | None:
    text = raw.get(key)
    return None if text is None or text == "null" else text


def _shallow(line: str, lineno: int) -> None:
    """ExportFormatError unless every value of ``line`` is nested at most as deep as a
    session accepts (checked before parsing: a parser would recurse that deep)."""
    try:
        check_text("the line", line, MAX_DEPTH + 1)
    except ValueError as exc:
        raise ExportFormatError(f"line {lineno}: {exc}") from None


def read_export(lines: Iterable[str]) -> Iterator[ConversationRecord]:
    """The conversations of an export file's lines, each complete and checked.

    Raises :class:`ExportFormatError` naming the line on anything malformed, including a
    file that ends inside a conversation (a truncated export imports nothing of it).
    """
    current: ConversationRecord | None = None
    expect_items = expect_usage = expect_branches = 0
    seen_header = False

    def finish(lineno: int) -> ConversationRecord | None:
        if current is None:
            return None
        if (
            len(current.items) != expect_items
            or len(current.usage) != expect_usage
            or len(current.branches) != expect_branches
        ):
            raise ExportFormatError(
                f"line {lineno}: conversation {current.session_id!r} has "
                f"{len(current.items)}/{expect_items} items, "
                f"{len(current.usage)}/{expect_usage} usage rows and "
                f"{len(current.branches)}/{expect_branches} branches (truncated file?)"
            )
        return current.checked()

    lineno = 0
    for lineno, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        _shallow(line, lineno)
        try:
            raw = raw_fields(line)
            kind = json.loads(raw.get("kind", "null"))
        except ValueError as exc:
            raise ExportFormatError(f"line {lineno}: not a JSON object line: {exc}") from None
        if kind == "header":
            if json.loads(raw.get("format", "null")) != FORMAT:
                raise ExportFormatError(f"line {lineno}: not a {FORMAT} file")
            version = json.loads(raw.get("version", "null"))
            if version not in READABLE:
                raise ExportFormatError(f"line {lineno}: format version {version} unsupported")
            seen_header = True
            continue
        if not seen_header:
            raise ExportFormatError(f"line {lineno}: the file must start with a header line")
        if kind == "conversation":
            done = finish(lineno)
            if done is not None:
                yield done
            current = ConversationRecord(
                session_id=_value(raw, "session_id", (str,), lineno),
                tenant=_value(raw, "tenant", (str,), lineno) if "tenant" in raw else None,
                metadata=_json_or_none(raw, "metadata") or "{}",
                created_at=_value(raw, "created_at", (str,), lineno),
                updated_at=_value(raw, "updated_at", (str,), lineno),
                next_seq=_value(raw, "next_seq", (int,), lineno),
                user_turns=_value(raw, "user_turns", (int,), lineno),
                current_branch=_optional(raw, "current_branch", lineno) or "main",
            )
            expect_items = _value(raw, "items", (int,), lineno)
            expect_usage = _value(raw, "usage_rows", (int,), lineno)
            expect_branches = _value(raw, "branches", (int,), lineno) if "branches" in raw else 0
            continue
        session_id = _value(raw, "session_id", (str,), lineno)
        if current is None or session_id != current.session_id:
            raise ExportFormatError(
                f"line {lineno}: {kind} of {session_id!r} outside its conversation"
            )
        if kind == "item":
            if "item" not in raw:
                raise ExportFormatError(f"line {lineno}: item line without 'item'")
            current.items.append(
                ItemRecord(
                    seq=_value(raw, "seq", (int,), lineno),
                    item=raw["item"],
                    role=_value(raw, "role", (str,), lineno),
                    type=_value(raw, "type", (str,), lineno),
                    created_at=_value(raw, "created_at", (str,), lineno),
                    branch=_optional(raw, "branch", lineno) or "main",
                )
            )
        elif kind == "branch":
            current.branches.append(
                BranchRecord(
                    branch_id=_value(raw, "branch_id", (str,), lineno),
                    parent_id=_value(raw, "parent_id", (str,), lineno),
                    from_turn=_value(raw, "from_turn", (int,), lineno),
                    anc=_value(raw, "anc", (list,), lineno),
                    upto=_value(raw, "upto", (list,), lineno),
                    created_at=_value(raw, "created_at", (str,), lineno),
                    deleted_at=_optional(raw, "deleted_at", lineno),
                )
            )
        elif kind == "usage":
            current.usage.append(
                UsageRecord(
                    user_turn_number=_value(raw, "user_turn_number", (int,), lineno),
                    model=_value(raw, "model", (str,), lineno),
                    requests=_value(raw, "requests", (int,), lineno),
                    input_tokens=_value(raw, "input_tokens", (int,), lineno),
                    output_tokens=_value(raw, "output_tokens", (int,), lineno),
                    total_tokens=_value(raw, "total_tokens", (int,), lineno),
                    input_tokens_details=_json_or_none(raw, "input_tokens_details"),
                    output_tokens_details=_json_or_none(raw, "output_tokens_details"),
                    created_at=_value(raw, "created_at", (str,), lineno),
                    branch=_optional(raw, "branch", lineno) or "main",
                )
            )
        else:
            raise ExportFormatError(f"line {lineno}: unknown kind {kind!r}")
    done = finish(lineno + 1)
    if done is not None:
        yield done


def header_line(schema: str, exported_at: str) -> str:
    """The first line of an export."""
    return json.dumps(
        {
            "kind": "header",
            "format": FORMAT,
            "version": VERSION,
            "schema": schema,
            "exported_at": exported_at,
        },
        ensure_ascii=False,
    )
