"""PostgresSession: the Agents SDK ``Session`` protocol on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from agents.memory.session import _await_mutation, _CompactionSnapshot
from agents.memory.session_settings import (
    SessionSettings,
    coerce_session_settings,
    resolve_session_limit,
)

from ..errors import TenantError
from ..router.config import SETTINGS
from ..router.protocol import RouteKey
from . import usage as _usage
from .branches import BranchMethods
from .ids import check_session_id, check_tenant, new_op_id
from .items import decode, encode_items, encode_metadata
from .schema import migrate_hint
from .sql.session import statements
from .tenants import tenant_errors

if TYPE_CHECKING:
    from agents.items import TResponseInputItem
    from agents.result import RunResultBase
    from agents.run_context import RunContextWrapper

    from ..router.protocol import Router

# PostgreSQL's LIMIT is a bigint; anything at or above this means "all"
_MAX_LIMIT = 2**63 - 1


def _ttl(value: float | timedelta | None) -> timedelta | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | timedelta):
        raise TypeError(f"ttl must be seconds or a timedelta, got {value!r}")
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    SETTINGS["session_ttl"].check("ttl (seconds)", seconds)  # NaN, inf, <= 0, centuries
    return value if isinstance(value, timedelta) else timedelta(seconds=value)


class PostgresSession(BranchMethods):
    """Conversation history of one session id, stored in PostgreSQL through a router.

    Implements the SDK's ``agents.memory.Session`` protocol and the branch, structure and
    usage methods of the SDK's ``AdvancedSQLiteSession`` (:class:`.branches.BranchMethods`):
    history calls act on the conversation's current branch. Writes go to the primary;
    history reads go wherever the router finds the session's writes replayed (see
    :attr:`consistency_token`). The tables must exist: run ``await pgsessions.migrate(router)``
    once at startup; no statement here creates or checks tables.

    Args:
        session_id: the conversation's id: a non-empty string without U+0000, at most 1024
            bytes of UTF-8 (ValueError otherwise, before any I/O).
        router: an open :class:`pgsessions.SessionRouter`.
        session_settings: ``SessionSettings`` or a dict; ``limit`` is the default for
            :meth:`get_items`.
        consistency_token: a token from :attr:`consistency_token` of another server; reads
            here then see at least that server's writes.
        metadata: a JSON object stored on the conversation when this session's first write
            creates it (use :meth:`update_metadata` to change an existing one).
        tenant: the tenant every call of this session acts for (a non-empty string, at most
            256 bytes of UTF-8), or None; see :meth:`resolve_tenant` to take it from the run
            context instead. Needs tenant isolation on in the schema (``pgsessions migrate
            --tenant-isolation on``): with it, PostgreSQL's row-level security lets the
            session see and change only its tenant's rows; without it a call with a tenant
            raises :class:`~pgsessions.errors.TenantError` (fail closed).
        ttl: time-to-live in seconds (or a timedelta); default ``RouterConfig.session_ttl``
            (None: forever). Items written before an idle gap longer than the TTL (counting
            up to now) are not read, like an expired key of the SDK's RedisSession: a
            conversation idle that long reads as empty, and one written again afterwards
            shows only the new items. ``pgsessions prune`` deletes them for good.
    """

    session_settings: SessionSettings | None = None

    def __init__(
        self,
        session_id: str,
        router: Router,
        *,
        session_settings: SessionSettings | dict[str, Any] | None = None,
        consistency_token: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        tenant: str | None = None,
        ttl: float | timedelta | None = None,
    ) -> None:
        self.session_id = session_id
        self.tenant = tenant
        self.session_settings = (
            coerce_session_settings(session_settings)
            if session_settings is not None
            else SessionSettings()
        )
        self.router = router
        self._sql = statements(router.config.schema)
        self._metadata = encode_metadata(metadata)
        self.ttl = _ttl(ttl if ttl is not None else router.config.session_ttl)
        self._token: str | None = None
        if consistency_token is not None:
            router.remember_token(self._key(self.tenant), consistency_token)  # validates it
            self._token = consistency_token

    @property
    def session_id(self) -> str:
        """The conversation's id: a non-empty string without U+0000 or lone surrogates, at
        most :data:`~pgsessions.sessions.ids.MAX_SESSION_ID_BYTES` (1024) bytes of UTF-8.
        Setting another id checks it the same way (ValueError)."""
        return self._session_id

    @session_id.setter
    def session_id(self, value: str) -> None:
        self._session_id = check_session_id(value)

    @property
    def tenant(self) -> str | None:
        """The tenant this session acts for (None: none); checked like :attr:`session_id`,
        at most :data:`~pgsessions.sessions.ids.MAX_TENANT_BYTES` (256) bytes."""
        return self._tenant

    @tenant.setter
    def tenant(self, value: str | None) -> None:
        self._tenant = None if value is None else check_tenant(value)

    def __repr__(self) -> str:
        return (
            f"PostgresSession(session_id={self.session_id!r}, "
            f"schema={self.router.config.schema!r}, tenant={self.tenant!r}, "
            f"token={self.consistency_token!r})"
        )

    # consistency ------------------------------------------------------------------------
    @property
    def consistency_token(self) -> str | None:
        """The newest write position this session must read at (pg_lsn text) or None.

        Hand it to another server (``PostgresSession(..., consistency_token=...)``) so that
        its reads see this session's writes.
        """
        return self.router.newest_token(self._token, self.router.token_for(self._key(self.tenant)))

    def _key(self, tenant: str | None) -> RouteKey:
        # what the router routes by and keeps this conversation's token under
        return RouteKey(tenant, self.session_id)

    def _setup(self, tenant: str | None) -> tuple[Any, Any] | None:
        # the tenant is set for the statement's own transaction only, on every attempt
        return None if tenant is None else (self._sql.set_tenant, (tenant,))

    def _note(self, token: str) -> None:
        self._token = self.router.newest_token(self._token, token)

    async def _write(
        self,
        operation: str,
        query: Any,
        params: Any,
        *,
        tenant: str | None,
        commits: bool = False,
        retry_params: Any = None,
        batch_query: Any = None,
    ) -> list[tuple[Any, ...]]:
        with migrate_hint(self.router.config.schema), tenant_errors(self.session_id, tenant):
            # the SDK's rule for every backend: a write in flight completes, then the
            # caller's own cancellation is re-raised (a failure meanwhile is retrieved)
            rows, token = await _await_mutation(
                self.router.execute_write(
                    operation,
                    self._key(tenant),
                    query,
                    params,
                    commits=commits,
                    setup=self._setup(tenant),
                    retry_params=retry_params,
                    batch_query=batch_query,
                    fenced_query=self._sql.fenced.get(query),
                )
            )
        self._note(token)
        return rows

    async def _read(
        self,
        operation: str,
        query: Any,
        params: Any,
        *,
        tenant: str | None,
        replay_column: bool = False,
    ) -> list[tuple[Any, ...]]:
        with migrate_hint(self.router.config.schema), tenant_errors(None, tenant):
            return await self.router.execute_read(
                operation,
                self._key(tenant),
                query,
                params,
                token=self._token,
                setup=self._setup(tenant),
                replay_column=replay_column,
            )

    # tenant seam ------------------------------------------------------------------------
    def resolve_tenant(self, wrapper: RunContextWrapper[Any] | None) -> str | None:
        """The tenant a call acts for; by default the session's own ``tenant``.

        The Agents SDK passes its ``RunContextWrapper`` as ``wrapper=`` to :meth:`get_items`,
        :meth:`add_items`, :meth:`pop_item` and :meth:`clear_session`, and
        :meth:`store_run_usage` passes ``result.context_wrapper``; the other methods (and
        direct calls without a wrapper) pass None. Override it to take the tenant from the
        run context, e.g. ``return wrapper.context.tenant_id if wrapper else self.tenant``.
        A result of None means the session's ``tenant``; a tenant other than a non-None
        ``tenant`` raises :class:`~pgsessions.errors.TenantError`, so a session
        bound to one tenant never acts for another.
        """
        return self.tenant

    def _tenant_for(self, wrapper: Any) -> str | None:
        resolved = self.resolve_tenant(wrapper)
        if resolved is None:
            return self.tenant
        check_tenant(resolved)
        if self.tenant is not None and resolved != self.tenant:
            raise TenantError(
                f"resolve_tenant returned {resolved!r}, but this session belongs to tenant "
                f"{self.tenant!r}"
            )
        return resolved

    # the Session protocol -----------------------------------------------------------------
    async def get_items(
        self,
        limit: int | None = None,
        branch_id: str | None = None,
        *,
        wrapper: RunContextWrapper[Any] | None = None,
    ) -> list[TResponseInputItem]:
        """The latest ``limit`` items of the current branch (or of ``branch_id``: [] for one
        that does not exist) in chronological order.

        ``limit=None`` uses ``session_settings.limit`` (None: all items); 0 returns [] without
        a round trip; a limit above the history returns all of it. One statement whose cost
        grows with ``limit``, not with the history. A negative limit raises ValueError (the
        SDK's SQLiteSession returns everything, its RedisSession returns []: an error is the
        one answer that cannot be mistaken for a history). ``wrapper``: see
        :meth:`resolve_tenant`.
        """
        tenant = self._tenant_for(wrapper)
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
        params: tuple[Any, ...]
        if self.ttl is None:
            query = self._sql.get_items
            params = (self.session_id, branch_id, effective)
        else:
            query = self._sql.get_items_ttl
            params = (self.ttl, self.session_id, branch_id, effective)
        rows = await self._read("get_items", query, params, tenant=tenant, replay_column=True)
        text = rows[0][0] if rows else None
        if text is None:
            return []
        items: list[TResponseInputItem] = decode(f"[{text}]")
        return items

    async def add_items(
        self, items: list[TResponseInputItem], *, wrapper: RunContextWrapper[Any] | None = None
    ) -> None:
        """Append ``items`` to the current branch in order, all or nothing, in one round trip
        to the primary.

        ``[]`` does nothing. Every item is encoded before any I/O: one that is not a dict (a
        JSON object) or not JSON serialisable raises TypeError (NaN/infinity: ValueError)
        naming its index, and nothing is written. The batch carries an operation id, so a
        retry by the router after an ambiguous failure applies it once.
        """
        tenant = self._tenant_for(wrapper)
        batch = encode_items(items)
        if not batch:
            return
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
            tenant=tenant,
            commits=True,
            retry_params=(*params[:-1], True),
            batch_query=self._sql.add_items_in_batch,
        )

    async def pop_item(
        self, *, wrapper: RunContextWrapper[Any] | None = None
    ) -> TResponseInputItem | None:
        """Remove and return the newest item of the current branch; None when it is empty or
        the session unknown. Other branches that share the item keep it.

        Concurrent callers each get a different item; a retried call returns the item the
        first attempt removed. Popping the user item that opened the current turn also
        removes that turn's usage row (as AdvancedSQLiteSession does).
        """
        tenant = self._tenant_for(wrapper)
        rows = await self._write(
            "pop_item", self._sql.pop_item, (self.session_id, new_op_id()), tenant=tenant
        )
        text = rows[0][0] if rows else None
        if text is None:
            return None
        item: TResponseInputItem = decode(text)
        return item

    async def clear_session(self, *, wrapper: RunContextWrapper[Any] | None = None) -> None:
        """Delete the conversation: every branch's items, metadata and usage rows (branch ids
        stay taken). No-op when unknown.

        Carries an operation id: a retry after a lost reply does not delete what another
        server added after the clear.
        """
        tenant = self._tenant_for(wrapper)
        await self._write(
            "clear_session", self._sql.clear_session, (self.session_id, new_op_id()), tenant=tenant
        )

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
        it), like the SDK's own backends, and for a session with a ``ttl`` (the snapshot
        would include expired items).
        """
        cls = type(self)
        if cls.get_items is not PostgresSession.get_items or (
            cls.add_items is not PostgresSession.add_items
        ):
            return None
        if self.ttl is not None:
            return None  # the snapshot would include expired items: the SDK's generic path
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"compaction snapshot limit must be an int >= 1, got {limit!r}")
        tenant = self._tenant_for(None)
        rows = await self._read(
            "compaction_snapshot",
            self._sql.compaction_snapshot,
            (limit + 1, self.session_id),
            tenant=tenant,
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
                prune_through = await self._expired_prefix_end(
                    expected[0], limit, prune_prefix, tenant
                )
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
                tenant=tenant,
            )
            return bool(rows and rows[0][0])

        return _CompactionSnapshot(items, complete, replace_suffix)

    async def _expired_prefix_end(
        self,
        before: int,
        page: int,
        expired: Callable[[TResponseInputItem], bool],
        tenant: str | None,
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
                tenant=tenant,
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
            tenant=self._tenant_for(None),
        )
        result: dict[str, Any] = decode(rows[0][0])
        return result

    async def get_metadata(self) -> dict[str, Any] | None:
        """The conversation's metadata, or None when the conversation does not exist."""
        rows = await self._read(
            "get_metadata",
            self._sql.get_metadata,
            (self.session_id,),
            tenant=self._tenant_for(None),
        )
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
        tenant = self._tenant_for(getattr(result, "context_wrapper", None))
        params = _usage.usage_params(result)
        if params is None:
            return
        await self._write(
            "store_run_usage",
            self._sql.store_usage,
            (self.session_id, new_op_id(), *params),
            tenant=tenant,
        )

    async def get_session_usage(self, branch_id: str | None = None) -> dict[str, int] | None:
        """Sums over the stored turns of ``branch_id`` (None: of every branch, as
        AdvancedSQLiteSession): requests, input_tokens, output_tokens, total_tokens,
        total_turns; None when nothing is stored."""
        rows = await self._read(
            "get_session_usage",
            self._sql.session_usage,
            (self.session_id, branch_id, branch_id),
            tenant=self._tenant_for(None),
        )
        return _usage.session_usage(rows)

    async def get_turn_usage(
        self, user_turn_number: int | None = None, branch_id: str | None = None
    ) -> list[dict[str, Any]] | dict[str, Any]:
        """One turn's usage as a dict ({} when not stored), or with no argument the list of
        all turns, each with ``user_turn_number``, in turn order; of ``branch_id``, or of the
        current branch when None."""
        tenant = self._tenant_for(None)
        ids = (self.session_id, self.session_id, branch_id)
        if user_turn_number is None:
            rows = await self._read("get_turn_usage", self._sql.turn_usage_all, ids, tenant=tenant)
            return _usage.all_turns(rows)
        rows = await self._read(
            "get_turn_usage",
            self._sql.turn_usage_one,
            (*ids, user_turn_number),
            tenant=tenant,
        )
        return _usage.one_turn(rows)
