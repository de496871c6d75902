"""Items <-> the JSON text stored in ``messages.item`` (a ``json`` column)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..router.arrays import TextArray
from .limits import MAX_ITEM_BYTES, check_depth, check_text, value_depth

# json keeps the text as written: "\u0000" escapes (which jsonb refuses), large integers,
# float repr and key order all come back as they went in.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
# for strings holding lone surrogates, which UTF-8 cannot carry: escape everything
_encode_ascii = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode
_decode = json.JSONDecoder().decode
# an escaped U+0000: "\u0000" preceded by an even number of backslashes
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


class EncodedBatch:
    """A batch ready for ``add_items``: item texts and the extracted role/type columns, each
    a binary ``text[]`` parameter."""

    __slots__ = ("items", "roles", "types")

    def __init__(self, items: list[str], roles: list[str | None], types: list[str | None]):
        self.items = TextArray(items)
        self.roles = TextArray(roles)
        self.types = TextArray(types)

    def __len__(self) -> int:
        return len(self.items)


def encode_item(item: Any, index: int = 0) -> str:
    """One item as JSON text.

    Raises TypeError (not a dict, or not serialisable: set, bytes, objects) or ValueError
    (NaN, infinity, circular reference, nested deeper than
    :data:`~pgsessions.sessions.limits.MAX_DEPTH`, larger than
    :data:`~pgsessions.sessions.limits.MAX_ITEM_BYTES`) naming ``index``.
    """
    if not isinstance(item, dict):
        # the SDK's items are JSON objects (TypedDicts); anything else is a caller's mistake
        raise TypeError(f"item {index} is not a JSON object (a dict): got {type(item).__name__}")
    try:
        text = _encode(item)
    except TypeError as exc:
        raise TypeError(f"item {index} is not JSON-serialisable: {exc}") from None
    except ValueError as exc:  # NaN/inf (PostgreSQL json refuses them), circular references
        raise ValueError(f"item {index} cannot be stored as JSON: {exc}") from None
    except RecursionError:
        check_depth(f"item {index}", value_depth(item))
        raise  # not nested past the limit: the caller's own stack is that deep
    check_text(f"item {index}", text)
    if not utf8_safe(text):
        text = _encode_ascii(item)  # lone surrogates travel as \udXXX escapes
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    if size > MAX_ITEM_BYTES:
        raise ValueError(
            f"item {index} is {size} bytes of JSON; at most {MAX_ITEM_BYTES} are allowed"
        )
    return text


def utf8_safe(text: str) -> bool:
    """Whether ``text`` can travel as UTF-8 (no lone surrogates)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _column(item: Any, key: str) -> str | None:
    if isinstance(item, Mapping):
        value = item.get(key)
        if isinstance(value, str) and "\x00" not in value and utf8_safe(value):
            return value
    return None


def encode_items(items: Sequence[Any]) -> EncodedBatch:
    """Encode a whole batch before any I/O, so a bad item leaves the session untouched.

    Every item must be a dict (a JSON object): TypeError naming the first other one's index.
    """
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Sequence):
        raise TypeError(f"items must be a list of dicts, got {type(items).__name__}")
    texts = [encode_item(item, i) for i, item in enumerate(items)]
    return EncodedBatch(
        texts, [_column(i, "role") for i in items], [_column(i, "type") for i in items]
    )


def decode(text: str) -> Any:
    """Parse JSON text read from the database."""
    return _decode(text)


def encode_metadata(metadata: Mapping[str, Any] | None) -> str | None:
    """Conversation metadata as JSON text for a ``jsonb`` column (None stays None).

    jsonb cannot hold U+0000 and does not keep number precision beyond numeric; metadata is
    meant for small filterable labels, so U+0000 is refused with ValueError, and so is
    nesting deeper than :data:`~pgsessions.sessions.limits.MAX_DEPTH`.
    """
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping, got {type(metadata).__name__}")
    try:
        text = _encode(dict(metadata))
    except TypeError as exc:
        raise TypeError(f"metadata is not JSON-serialisable: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"metadata cannot be stored as JSON: {exc}") from None
    except RecursionError:
        check_depth("metadata", value_depth(dict(metadata)))
        raise
    check_text("metadata", text)
    if not utf8_safe(text):
        raise ValueError("metadata cannot contain lone surrogates (PostgreSQL jsonb refuses them)")
    if _NUL_ESCAPE.search(text):
        raise ValueError("metadata cannot contain U+0000 (PostgreSQL jsonb refuses it)")
    return text
