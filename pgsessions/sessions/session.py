"""PostgresSession: the Agents SDK ``Session`` protocol on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from agents.memory.session import _await_mutation, _CompactionSnapshot
from agents.memory.session_settings import (
    SessionSettings,
    coerce_session_settings,
    resolve_session_limit,
)

from ..router.lsn import format_lsn, parse_lsn
from . import usage as _usage
from .items import decode, encode_items, encode_metadata, utf8_safe
from .opids import new_op_id
from .schema import migrate_hint
from .sql import statements

if TYPE_CHECKING:
    from agents.items import TResponseInputItem
    from agents.result import RunResultBase
    from agents.run_context import RunContextWrapper

    from ..router import SessionRouter

# PostgreSQL's LIMIT is a bigint; anything at or above this means "all"
_MAX_LIMIT = 2**63 - 1


def _no_branches(branch_id: str | None) -> None:
    if branch_id is not None:
        raise ValueError(
            f"branch_id={branch_id!r}: pgsessions has no conversation branches (it accepts "
            "branch_id only so that code written for AdvancedSQLiteSession runs unchanged)"
        )


class PostgresSession:
    """Conversation history of one session id, stored in PostgreSQL through a router.

    Implements the SDK's ``agents.memory.Session`` protocol. Writes go to the primary;
    history reads go wherever the router finds the session's writes replayed (see
    :attr:`consistency_token`). The tables must exist: run ``await pgsessions.migrate(router)``
    once at startup; no statement here creates or checks tables.

    Args:
        session_id: the conversation's id (a non-empty string without U+0000).
        router: an open :class:`pgsessions.SessionRouter`.
        session_settings: ``SessionSettings`` or a dict; ``limit`` is the default for
            :meth:`get_items`.
        consistency_token: a token from :attr:`consistency_token` of another server; reads
            here then see at least that server's writes.
        metadata: a JSON object stored on the conversation when this session's first write
            creates it (use :meth:`update_metadata` to change an existing one).
    """

    session_settings: SessionSettings | None = None

    def __init__(
        self,
        session_id: str,
        router: SessionRouter,
        *,
        session_settings: SessionSettings | dict[str, Any] | None = None,
        consistency_token: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(session_id, str) or not session_id:
            raise ValueError(f"session_id must be a non-empty string, got {session_id!r}")
        if "\x00" in session_id or not utf8_safe(session_id):
            raise ValueError(f"session_id cannot contain U+0000 or lone surrogates: {session_id!r}")
        self.session_id = session_id
        self.session_settings = (
            coerce_session_settings(session_settings)
            if session_settings is not None
            else SessionSettings()
        )
        self.router = router
        self._sql = statements(router.config.schema)
        self._metadata = encode_metadata(metadata)
        self._token: int | None = None
        if consistency_token is not None:
            self._token = parse_lsn(consistency_token)
            router.remember_token(session_id, consistency_token)

    def __repr__(self) -> str:
        return (
            f"PostgresSession(session_id={self.session_id!r}, "
            f"schema={self.router.config.schema!r}, token={self.consistency_token!r})"
        )

    # consistency ------------------------------------------------------------------------
    @property
    def consistency_token(self) -> str | None:
        """The newest write position this session must read at (pg_lsn text) or None.

        Hand it to another server (``PostgresSession(..., consistency_token=...)``) so that
        its reads see this session's writes.
        """
        mine = self._token
        theirs = self.router.token_for(self.session_id)
        if theirs is not None and (mine is None or parse_lsn(theirs) > mine):
            return theirs
        return None if mine is None else format_lsn(mine)

    def _own_token(self) -> str | None:
        # the router adds the token it remembers for this session id itself
        return None if self._token is None else format_lsn(self._token)

    def _note(self, token: str) -> None:
        lsn = parse_lsn(token)
        if self._token is None or lsn > self._token:
            self._token = lsn

    async def _write(
        self,
        operation: str,
        query: Any,
        params: Any,
        *,
        commits: bool = False,
        retry_params: Any = None,
    ) -> list[tuple[Any, ...]]:
        with migrate_hint(self.router.config.schema):
            # the SDK's rule for every backend: a write in flight completes, then the
            # caller's own cancellation is re-raised (a failure meanwhile is retrieved)
            rows, token = await _await_mutation(
                self.router.execute_write(
                    operation,
                    self.session_id,
                    query,
                    params,
                    commits=commits,
                    retry_params=retry_params,
                )
            )
        self._note(token)
        return rows

    async def _read(self, operation: str, query: Any, params: Any) -> list[tuple[Any, ...]]:
        with migrate_hint(self.router.config.schema):
            return await self.router.execute_read(
                operation, self.session_id, query, params, token=self._own_token()
            )

    # tenant seam ------------------------------------------------------------------------
    def resolve_tenant(self, wrapper: RunContextWrapper[Any] | None) -> str | None:
        """The tenant a history call acts for, taken from the runner's ``wrapper``.

        The Agents SDK passes its ``RunContextWrapper`` as ``wrapper=`` to :meth:`get_items`,
        :meth:`add_items`, :meth:`pop_item` and :meth:`clear_session` (direct calls may pass
        it or not); each of them calls this method first. This is the seam for tenant
        isolation: it returns None here (no tenant checks). pgsessions does not enforce
        tenants yet, so an override that returns a tenant fails closed: the call raises
        NotImplementedError rather than run without the isolation the override asked for.
        """
        return None

    def _check_tenant(self, wrapper: RunContextWrapper[Any] | None) -> None:
        tenant = self.resolve_tenant(wrapper)
        if tenant is not None:
            raise NotImplementedError(
                f"resolve_tenant returned {tenant!r}, but pgsessions does not enforce tenant "
                "isolation yet; refusing to run the call without it"
            )

    # the Session protocol -----------------------------------------------------------------
    async def get_items(
        self, limit: int | None = None, *, wrapper: RunContextWrapper[Any] | None = None
    ) -> list[TResponseInputItem]:
        """The latest ``limit`` items in chronological order.

        ``limit=None`` uses ``session_settings.limit`` (None: all items); 0 returns [] without
        a round trip; a limit above the history returns all of it. One statement whose cost
        grows with ``limit``, not with the history. A negative limit raises ValueError (the
        SDK's SQLiteSession returns everything, its RedisSession returns []: an error is the
        one answer that cannot be mistaken for a history). ``wrapper``: see
        :meth:`resolve_tenant`.
        """
        self._check_tenant(wrapper)
        effective = resolve_session_limit(limit, self.session_settings)
        if effective is not None:
            if isinstance(effective, bool) or not isinstance(effective, int):
                raise TypeError(f"limit must be an int or None, got {effective!r}")
            if effective < 0:
                raise ValueError(f"limit must be >= 0 or None, got {effective}")
            if effective == 0:
                return []
            if effective >= _MAX_LIMIT:
                effective = None
        rows = await self._read("get_items", self._sql.get_items, (self.session_id, effective))
        text = rows[0][0] if rows else None
        if text is None:
            return []
        items: list[TResponseInputItem] = decode(text)
        return items

    async def add_items(
        self, items: list[TResponseInputItem], *, wrapper: RunContextWrapper[Any] | None = None
    ) -> None:
        """Append ``items`` in order, all or nothing, in one round trip to the primary.

        ``[]`` does nothing. Every item is encoded before any I/O: one that is not JSON
        serialisable raises TypeError (NaN/infinity: ValueError) naming its index, and
        nothing is written. The batch carries an operation id, so a retry by the router
        after an ambiguous failure applies it once.
        """
        self._check_tenant(wrapper)
        if not items:
            return
        batch = encode_items(items)
        params = (
            self.session_id,
            new_op_id(),
            batch.items,
            batch.roles,
            batch.types,
            self._metadata,
            False,
        )
        # a retry looks the operation id up before applying (migration 0007)
        await self._write(
            "add_items",
            self._sql.add_items,
            params,
            commits=True,
            retry_params=(*params[:-1], True),
        )

    async def pop_item(
        self, *, wrapper: RunContextWrapper[Any] | None = None
    ) -> TResponseInputItem | None:
        """Remove and return the newest item; None when the session is empty or unknown.

        Concurrent callers each get a different item; a retried call returns the item the
        first attempt removed. Popping the user item that opened the current turn also
        removes that turn's usage row (as AdvancedSQLiteSession does).
        """
        self._check_tenant(wrapper)
        rows = await self._write("pop_item", self._sql.pop_item, (self.session_id, new_op_id()))
        text = rows[0][0] if rows else None
        if text is None:
            return None
        item: TResponseInputItem = decode(text)
        return item

    async def clear_session(self, *, wrapper: RunContextWrapper[Any] | None = None) -> None:
        """Delete the conversation: its items, metadata and usage rows. No-op when unknown.

        Carries an operation id: a retry after a lost reply does not delete what another
        server added after the clear.
        """
        self._check_tenant(wrapper)
        await self._write("clear_session", self._sql.clear_session, (self.session_id, new_op_id()))

    # compaction (the SDK's optional backend hook) -------------------------------------------
    async def _get_compaction_snapshot(
        self,
        limit: int,
        *,
        prune_prefix: Callable[[TResponseInputItem], bool] | None = None,
    ) -> _CompactionSnapshot | None:
        """The latest ``limit`` items with an atomic ``replace_suffix(start, items)``.

        The hook the SDK's compaction (``OpenAIResponsesCompactionSession``, and
        ``EncryptedSession`` over it) uses instead of clearing and re-adding the history.
        ``replace_suffix`` replaces ``items[start:]`` of this snapshot with the compacted
        items in one transaction on the primary, after deleting the oldest items for which
        ``prune_prefix`` holds (up to the first that does not). It returns False and
        changes nothing when the session's newest items are no longer the snapshot's (an
        item added, popped or replaced since, by any server): a concurrent write is never
        lost or reordered. It carries an operation id like every write. Returns None for a
        subclass that overrides how items are read or written (the snapshot would bypass
        it), like the SDK's own backends.
        """
        cls = type(self)
        if cls.get_items is not PostgresSession.get_items or (
            cls.add_items is not PostgresSession.add_items
        ):
            return None
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"compaction snapshot limit must be an int >= 1, got {limit!r}")
        rows = await self._read(
            "compaction_snapshot", self._sql.compaction_snapshot, (limit + 1, self.session_id)
        )
        created = rows[0][0] if rows else None
        fetched: list[list[Any]] = decode(rows[0][1]) if rows and rows[0][1] else []
        complete = len(fetched) <= limit
        snapshot = fetched[-limit:]
        seqs = [int(seq) for seq, _ in snapshot]
        items: list[TResponseInputItem] = [item for _, item in snapshot]

        async def replace_suffix(start: int, output: list[TResponseInputItem]) -> bool:
            if isinstance(start, bool) or not isinstance(start, int):
                raise TypeError(f"start must be an int, got {start!r}")
            if not 0 <= start <= len(seqs):
                raise ValueError(f"start={start} is outside this snapshot of {len(seqs)} items")
            expected = seqs[start:]
            batch = encode_items(output)
            if not expected or created is None:
                return False
            prune_through = None
            if prune_prefix is not None:
                prune_through = await self._expired_prefix_end(expected[0], limit, prune_prefix)
            rows = await self._write(
                "replace_suffix",
                self._sql.replace_suffix,
                (
                    self.session_id,
                    new_op_id(),
                    created,
                    expected,
                    prune_through,
                    batch.items,
                    batch.roles,
                    batch.types,
                ),
            )
            return bool(rows and rows[0][0])

        return _CompactionSnapshot(items, complete, replace_suffix)

    async def _expired_prefix_end(
        self, before: int, page: int, expired: Callable[[TResponseInputItem], bool]
    ) -> int | None:
        """The seq of the last item of the run of oldest items (before seq ``before``) for
        which ``expired`` holds, or None when the oldest one does not."""
        end: int | None = None
        after = 0
        page = max(page, 100)
        while True:
            rows = await self._read(
                "compaction_snapshot",
                self._sql.compaction_prefix,
                (self.session_id, after, before, page),
            )
            chunk: list[list[Any]] = decode(rows[0][0]) if rows and rows[0][0] else []
            for seq, item in chunk:
                if not expired(item):
                    return end
                end = after = int(seq)
            if len(chunk) < page:
                return end

    # metadata ---------------------------------------------------------------------------
    async def update_metadata(
        self, metadata: Mapping[str, Any], *, replace: bool = False
    ) -> dict[str, Any]:
        """Merge ``metadata`` into the conversation's (top-level keys; ``replace=True``
        replaces it whole); creates the conversation if needed. Returns the new metadata.
        A retry after a lost reply returns the original outcome and changes nothing."""
        text = encode_metadata(metadata)
        rows = await self._write(
            "update_metadata",
            self._sql.update_metadata,
            (self.session_id, new_op_id(), text, bool(replace)),
        )
        result: dict[str, Any] = decode(rows[0][0])
        return result

    async def get_metadata(self) -> dict[str, Any] | None:
        """The conversation's metadata, or None when the conversation does not exist."""
        rows = await self._read("get_metadata", self._sql.get_metadata, (self.session_id,))
        if not rows:
            return None
        result: dict[str, Any] = decode(rows[0][0])
        return result

    # usage (same names and shapes as the SDK's AdvancedSQLiteSession) ------------------------
    async def store_run_usage(self, result: RunResultBase) -> None:
        """Store ``result.context_wrapper.usage`` for the current user turn.

        The current turn is the number of items with role ``"user"`` in the session; storing
        again for the same turn replaces the row. Nothing is stored while the session has no
        user item. Carries an operation id: a retry after a lost reply writes nothing again,
        even if another server added a user item meanwhile. Database errors propagate (the
        SDK's SQLite version only logs them).
        """
        params = _usage.usage_params(result)
        if params is None:
            return
        await self._write(
            "store_run_usage", self._sql.store_usage, (self.session_id, new_op_id(), *params)
        )

    async def get_session_usage(self, branch_id: str | None = None) -> dict[str, int] | None:
        """Sums over all stored turns: requests, input_tokens, output_tokens, total_tokens,
        total_turns; None when nothing is stored. ``branch_id`` exists for code written for
        the SDK's AdvancedSQLiteSession: pgsessions has no branches, so it must be None."""
        _no_branches(branch_id)
        rows = await self._read("get_session_usage", self._sql.session_usage, (self.session_id,))
        return _usage.session_usage(rows)

    async def get_turn_usage(
        self, user_turn_number: int | None = None, branch_id: str | None = None
    ) -> list[dict[str, Any]] | dict[str, Any]:
        """One turn's usage as a dict ({} when not stored), or with no argument the list of
        all turns, each with ``user_turn_number``, in turn order. ``branch_id``: as in
        :meth:`get_session_usage`, must be None."""
        _no_branches(branch_id)
        if user_turn_number is None:
            rows = await self._read("get_turn_usage", self._sql.turn_usage_all, (self.session_id,))
            return _usage.all_turns(rows)
        rows = await self._read(
            "get_turn_usage", self._sql.turn_usage_one, (self.session_id, user_turn_number)
        )
        return _usage.one_turn(rows)
