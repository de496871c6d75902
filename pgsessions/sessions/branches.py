"""Conversation branches and structure: AdvancedSQLiteSession's methods on PostgresSession.

The current branch is stored with the conversation (migration 0010), not in the session
object: whichever server serves the next turn continues on the branch another server
created or switched to. Each write is one statement on the primary under the conversation
row's lock with an operation id, so a retried call has the outcome of one delivery and two
servers branching at once end in the state of the one that ran last.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from psycopg import errors

from . import structure
from .ids import new_op_id
from .items import decode

if TYPE_CHECKING:
    from .sql.session import Statements

#: the DETAIL of the errors migration 0010 raises for the SDK's ValueErrors
_BRANCH_ERROR = "pgsessions:branch"


@contextmanager
def branch_errors() -> Iterator[None]:
    """Raise the database's branch errors as the SDK's ValueErrors (same messages)."""
    try:
        yield
    except errors.InvalidParameterValue as exc:
        if exc.diag.message_detail != _BRANCH_ERROR:
            raise
        raise ValueError(exc.diag.message_primary or str(exc)) from None


def _check_name(branch_id: str | None, what: str) -> None:
    if branch_id is not None and not isinstance(branch_id, str):
        raise TypeError(f"{what} must be a string, got {type(branch_id).__name__}")


class BranchMethods:
    """Branches, turn structure and tool usage (mixed into PostgresSession)."""

    if TYPE_CHECKING:
        _sql: Statements

        @property
        def session_id(self) -> str: ...

        def _tenant_for(self, wrapper: Any) -> str | None: ...

        async def _write(
            self,
            operation: str,
            query: Any,
            params: Any,
            *,
            tenant: str | None,
            commits: bool = False,
            retry_params: Any = None,
        ) -> list[tuple[Any, ...]]: ...

        async def _read(
            self,
            operation: str,
            query: Any,
            params: Any,
            *,
            tenant: str | None,
            replay_column: bool = False,
        ) -> list[tuple[Any, ...]]: ...

    # writes ---------------------------------------------------------------------------
    async def create_branch_from_turn(
        self, turn_number: int, branch_name: str | None = None
    ) -> str:
        """Create a branch from user turn ``turn_number`` of the current branch and switch to
        it; returns its id.

        The branch starts with the items before that turn's user item, shared with the
        branch it came from (not copied). ``branch_name`` None: ``branch_from_turn_N_<unix
        time>`` (with ``_2``, ``_3``... when taken). ValueError when the turn has no user
        item, or the name is blank or was ever used in this conversation (``main``
        included): an id is never reused, not even after a delete or a clear.
        """
        _check_name(branch_name, "branch_name")
        if branch_name is not None and not branch_name.strip():
            raise ValueError("Branch name cannot be empty")
        if isinstance(turn_number, bool) or not isinstance(turn_number, int):
            raise TypeError(f"turn_number must be an int, got {turn_number!r}")
        base = f"branch_from_turn_{turn_number}_{int(time.time())}"
        with branch_errors():
            rows = await self._write(
                "create_branch",
                self._sql.create_branch,
                (self.session_id, new_op_id(), branch_name, turn_number, base),
                tenant=self._tenant_for(None),
            )
        name: str = rows[0][0]
        return name

    async def create_branch_from_content(
        self, search_term: str, branch_name: str | None = None
    ) -> str:
        """Create a branch from the first user turn containing ``search_term`` (see
        :meth:`find_turns_by_content`) and switch to it; ValueError when none does."""
        matching = await self.find_turns_by_content(search_term)
        if not matching:
            raise ValueError(f"No user turns found containing '{search_term}'")
        turn: int = matching[0]["turn"]
        return await self.create_branch_from_turn(turn, branch_name)

    async def switch_to_branch(self, branch_id: str) -> None:
        """Make ``branch_id`` the conversation's current branch, for every server.

        ``main`` always exists (AdvancedSQLiteSession refuses it while it has no item);
        ValueError for another branch that does not exist (or was deleted).
        """
        _check_name(branch_id, "branch_id")
        with branch_errors():
            await self._write(
                "switch_branch",
                self._sql.switch_branch,
                (self.session_id, new_op_id(), branch_id),
                tenant=self._tenant_for(None),
            )

    async def delete_branch(self, branch_id: str, force: bool = False) -> None:
        """Delete a branch with its usage rows and the items no other branch shares.

        The id stays taken. ValueError for a blank id, ``main``, an unknown branch, or the
        current branch without ``force`` (with it, the conversation continues on ``main``).
        """
        _check_name(branch_id, "branch_id")
        if not branch_id or not branch_id.strip():
            raise ValueError("Branch ID cannot be empty")
        if branch_id == "main":
            raise ValueError("Cannot delete the 'main' branch")
        with branch_errors():
            await self._write(
                "delete_branch",
                self._sql.delete_branch,
                (self.session_id, new_op_id(), branch_id, bool(force)),
                tenant=self._tenant_for(None),
            )

    # reads ----------------------------------------------------------------------------
    async def current_branch(self) -> str:
        """The conversation's current branch (``main`` for a new conversation), as stored
        with it: where this server's and every other server's next turn goes. (The SDK's
        AdvancedSQLiteSession keeps it in ``_current_branch_id``, per object.)"""
        rows = await self._read(
            "current_branch",
            self._sql.current_branch,
            (self.session_id,),
            tenant=self._tenant_for(None),
        )
        branch: str = rows[0][0] if rows else "main"
        return branch

    async def list_branches(self) -> list[dict[str, Any]]:
        """Every branch of the conversation, oldest first ([] when it does not exist): dicts
        with ``branch_id``, ``message_count``, ``user_turns``, ``is_current`` and
        ``created_at`` (UTC text as AdvancedSQLiteSession's: ``YYYY-MM-DD HH:MM:SS``)."""
        rows = await self._read(
            "list_branches",
            self._sql.list_branches,
            (self.session_id,),
            tenant=self._tenant_for(None),
        )
        return [
            {
                "branch_id": branch,
                "message_count": count,
                "user_turns": users,
                "is_current": bool(current),
                "created_at": created,
            }
            for branch, count, users, current, created in rows
        ]

    async def _branch_rows(self, branch_id: str | None, *, users_only: bool) -> list[Any]:
        _check_name(branch_id, "branch_id")
        rows = await self._read(
            "branch_structure",
            self._sql.branch_rows,
            (self.session_id, branch_id, users_only),
            tenant=self._tenant_for(None),
        )
        text = rows[0][0] if rows else None
        found: list[Any] = decode(text) if text else []
        return found

    async def get_conversation_turns(self, branch_id: str | None = None) -> list[dict[str, Any]]:
        """The user turns of a branch (the current one by default): dicts with ``turn``,
        ``content`` (at most 100 characters, then ``...``), ``full_content``, ``timestamp``
        and ``can_branch`` (True)."""
        return structure.user_turns(await self._branch_rows(branch_id, users_only=True))

    async def find_turns_by_content(
        self, search_term: str, branch_id: str | None = None
    ) -> list[dict[str, Any]]:
        """The user turns whose text contains ``search_term`` (ASCII case-insensitive), in
        the shape of :meth:`get_conversation_turns` with the whole content as preview."""
        rows = await self._branch_rows(branch_id, users_only=True)
        return structure.matching_turns(rows, search_term)

    async def get_conversation_by_turns(
        self, branch_id: str | None = None
    ) -> dict[int, list[dict[str, str | None]]]:
        """A branch's items grouped by user turn: turn -> [{"type", "tool_name"}, ...]."""
        return structure.by_turns(await self._branch_rows(branch_id, users_only=False))

    async def get_tool_usage(self, branch_id: str | None = None) -> list[tuple[str, int, int]]:
        """Tool calls of a branch as (tool name, count, turn), in turn order."""
        return structure.tool_usage(await self._branch_rows(branch_id, users_only=False))
