"""Logical export and import: JSON Lines of conversations, items and usage rows.

``pgsessions export`` / ``pgsessions import`` (see :mod:`.cli`); from Python,
:func:`export_lines` and :func:`import_records`. Items travel as the exact text stored in
the ``json`` column (U+0000 escapes, large numbers and key order kept).
"""

from __future__ import annotations

from .dump import export_lines
from .load import ImportSummary, import_records
from .records import ConversationRecord, ItemRecord, UsageRecord, read_export

__all__ = [
    "ConversationRecord",
    "ImportSummary",
    "ItemRecord",
    "UsageRecord",
    "export_lines",
    "import_records",
    "read_export",
]
