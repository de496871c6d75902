"""Limits on JSON-ish input (items, metadata, usage details, import lines): nesting depth and
item size, checked before any I/O so that nothing is stored that a reader cannot read back.

Depth counts containers: ``{}`` and ``[]`` are 1 deep, ``{"a": [1]}`` is 2, a scalar is 0.
The readers measured here (Python 3.11, recursion limit 1000): ``json`` (our ``get_items``
decoding, the OpenAI client's request body) fails past about 990 levels; the SDK's Runner
deep-copies the input (two Python frames per level) and fails past about 490 levels from a
shallow stack, fewer from a deep one; pydantic-core's JSON parser stops at 200 levels and its
serializer at 255, whatever the stack. :data:`MAX_DEPTH` stays under all of them with room
for the envelopes readers add (a read's array, an export line, a web framework's response).
"""

from __future__ import annotations

from itertools import accumulate, repeat
from typing import Any

#: deepest nesting accepted in an item, metadata, usage details or an import line's value
MAX_DEPTH = 128
#: largest item accepted, in bytes of its JSON text (UTF-8)
MAX_ITEM_BYTES = 32 * 2**20

# outside its strings, JSON holds only brackets and these (numbers, literals, separators)
_NOT_BRACKETS = str.maketrans(dict.fromkeys(",:0123456789.+-eEtruefalsn \t\r\n"))
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def text_depth(text: str) -> int:
    """The nesting depth of JSON ``text`` (iterative, linear: any depth, no RecursionError).

    Escaped backslashes, then escaped quotes, are dropped, so that every remaining ``"``
    opens or closes a string; the text between them is dropped, and so is everything but
    brackets. The depth is then the running count's peak.
    """
    unescaped = text.replace("\\\\", "").replace('\\"', "")
    outside = "".join(unescaped.split('"')[0::2]).translate(_NOT_BRACKETS)
    steps = map(_STEP.get, outside, repeat(0))  # anything else (invalid JSON): 0
    return max(accumulate(steps), default=0)


def value_depth(value: Any) -> int:
    """The nesting depth of ``value`` (dicts, lists and tuples), iteratively; a container
    met again on its own path (a circular reference) is not followed again."""
    deepest = 0
    on_path: set[int] = set()
    stack: list[tuple[Any, int, bool]] = [(value, 1, False)]
    while stack:
        node, depth, leaving = stack.pop()
        if leaving:
            on_path.discard(id(node))
            continue
        if isinstance(node, dict):
            children = list(node.values())
        elif isinstance(node, list | tuple):
            children = list(node)
        else:
            continue
        if id(node) in on_path:
            continue
        deepest = max(deepest, depth)
        on_path.add(id(node))
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in children)
    return deepest


def check_depth(what: str, depth: int, limit: int = MAX_DEPTH) -> None:
    """ValueError naming ``what``, its ``depth`` and the limit when ``depth`` is past it."""
    if depth > limit:
        raise ValueError(f"{what} is nested {depth} levels deep; at most {limit} are allowed")


def check_text(what: str, text: str, limit: int = MAX_DEPTH) -> str:
    """``text`` (JSON) if it is nested at most ``limit`` deep, else ValueError."""
    if text.count("[") + text.count("{") > limit:  # else it cannot be deeper than limit
        check_depth(what, text_depth(text), limit)
    return text
