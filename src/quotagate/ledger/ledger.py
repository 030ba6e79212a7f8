"""The durable ledger in PostgreSQL, as the gateway, the worker and the jobs use it.

    ledger = await Ledger.connect(settings.database_url)
    await ledger.ensure_current()                 # refuse to run on a schema that is behind
    durable = await ledger.write_through(engine, account_id, result.outbox_entry_ids)
    page = await ledger.history(engine, account_id, limit=50)
    await ledger.aclose()

The driver is asyncpg, directly: the flush binds whole columns as arrays to one statement,
which is where the time goes, and SQLAlchemy would only wrap it (the models in
``quotagate.ledger.models`` describe the schema, and Alembic migrates it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import asyncpg
from redis.exceptions import RedisError

from quotagate.engine import CreditEngine
from quotagate.errors import BackendUnavailable
from quotagate.ledger import history as hist
from quotagate.ledger import members
from quotagate.ledger.apply import Applied, Staging, apply_entries, record_flush
from quotagate.ledger.faults import pause_point
from quotagate.ledger.migrate import check_current
from quotagate.ledger.outbox import Entry, read_ids
from quotagate.ledger.pool_usage import MemberPeriod, member_periods
from quotagate.ledger.postgres import create_pool, describe, in_transaction

log = logging.getLogger(__name__)

WRITE_THROUGH_TIMEOUT_SECONDS = 3.0
"""A request waits at most this long for its write-through; past it the answer says
``durable: false`` (the outbox still carries the entry to the ledger)."""

DEFAULT_MAX_CONNECTIONS = 8


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An account's row in user_credits."""

    account_id: str
    tier: str
    status: str
    credits: int
    monthly_credits: int
    overdraft_limit: int
    last_reset_at: datetime | None
    last_transaction_id: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class FlushState:
    """What the last committed flush of a partition reached."""

    partition: int
    last_stream_id: str
    flushed_at: datetime
    transactions: int


_SNAPSHOT_COLUMNS = (
    "account_id, tier, status, credits, monthly_credits, overdraft_limit, last_reset_at, "
    "last_transaction_id, created_at, updated_at"
)


class Ledger:
    """A connection pool to the ledger database and the operations on it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(
        cls, database_url: str, *, max_connections: int = DEFAULT_MAX_CONNECTIONS
    ) -> Ledger:
        """A ledger on ``database_url``. Connects lazily: this never fails for a server down."""
        return cls(await create_pool(database_url, max_connections))

    async def aclose(self) -> None:
        await self.pool.close()

    # -- health ------------------------------------------------------------------------------

    async def ping(self) -> None:
        """Raise BackendUnavailable unless PostgreSQL answers."""
        await in_transaction(self.pool, lambda conn: conn.fetchval("SELECT 1"), readonly=True)

    async def schema_revision(self) -> str | None:
        """The migration revision the database is at (None: never migrated)."""

        async def read(conn: asyncpg.Connection) -> str | None:
            try:
                value = await conn.fetchval("SELECT version_num FROM alembic_version")
            except asyncpg.UndefinedTableError:
                return None
            return None if value is None else str(value)

        return await in_transaction(self.pool, read, readonly=True)

    async def ensure_current(self) -> None:
        """ConfigError ("... run `quotagate migrate`") unless the schema is this version's."""
        check_current(await self.schema_revision())

    # -- writes ------------------------------------------------------------------------------

    async def apply_batch(
        self,
        entries: Sequence[Entry],
        *,
        default_tier: str,
        partition: int | None = None,
        staging: Staging | None = None,
    ) -> Applied:
        """Apply outbox entries in one transaction. With ``partition`` (the flush), also
        record the flush's progress in that transaction."""

        async def work(conn: asyncpg.Connection) -> Applied:
            applied = await apply_entries(conn, entries, default_tier=default_tier, staging=staging)
            if partition is not None and entries:
                await record_flush(conn, partition, entries[-1].stream_id, applied.inserted)
                await pause_point("before_commit")
            return applied

        return await in_transaction(self.pool, work)

    async def write_through(
        self, engine: CreditEngine, account_id: str, entry_ids: Sequence[str]
    ) -> bool:
        """Copy these outbox entries of the account into the ledger now, as the flush would.

        True once PostgreSQL committed them (or a flush already had: it deletes entries only
        after its commit). False, logged, when PostgreSQL failed: the outbox still has them
        and the flush will copy them later. The entries stay in the stream either way.
        """
        members.check_account_or_member_id(account_id)
        if not entry_ids:
            return True
        partition = engine.keys.partition_of(account_id)
        try:
            entries = await read_ids(engine, partition, entry_ids)
        except RedisError as exc:
            log.warning("write-through of %s: reading the outbox failed: %s", account_id, exc)
            return False
        foreign = [e.stream_id for e in entries if e.account_id != account_id]
        if foreign:
            raise ValueError(f"outbox entries {foreign} are not of account {account_id}")
        if not entries:
            return True
        try:
            async with asyncio.timeout(WRITE_THROUGH_TIMEOUT_SECONDS):
                await self.apply_batch(entries, default_tier=engine.config.default_tier)
        except (BackendUnavailable, TimeoutError) as exc:
            log.warning("write-through of %s not durable yet: %s", account_id, describe(exc))
            return False
        except Exception:
            log.exception("write-through of %s failed; the flush will retry it", account_id)
            return False
        return True

    # -- reads -------------------------------------------------------------------------------

    async def history(
        self,
        engine: CreditEngine,
        account_id: str,
        limit: int = 50,
        before: str | None = None,
    ) -> hist.HistoryPage:
        """The account's transactions newest first, pending ones (outbox only) included; a
        member's include its pool's spends that name it."""
        members.check_account_or_member_id(account_id)
        hist.check_page(limit, before)
        outbox = await hist.outbox_transactions(engine, account_id)
        return await in_transaction(
            self.pool,
            lambda conn: hist.read_page(conn, account_id, outbox, limit, before),
            isolation="repeatable_read",
            readonly=True,
        )

    async def present_ids(self, transaction_ids: Sequence[str]) -> set[str]:
        """Which of these transaction ids the ledger holds."""
        if not transaction_ids:
            return set()

        async def read(conn: asyncpg.Connection) -> set[str]:
            rows = await conn.fetch(hist.PRESENT_SQL, list(transaction_ids))
            return {r["id"] for r in rows}

        return await in_transaction(self.pool, read, readonly=True)

    async def snapshots(self, account_ids: Sequence[str]) -> dict[str, Snapshot]:
        """The user_credits rows of these accounts (absent ones are left out)."""

        async def read(conn: asyncpg.Connection) -> dict[str, Snapshot]:
            return await _snapshots(conn, account_ids)

        return await in_transaction(self.pool, read, readonly=True)

    async def read_books(
        self, account_ids: Sequence[str], transaction_ids: Sequence[str]
    ) -> BooksReading:
        """In one snapshot: the accounts' rows, their ledger sums, which of the transaction
        ids the ledger holds, what is left of each of their explicit grants, and, for those
        that are a pool's members, what the pool paid for them in its period."""

        async def read(conn: asyncpg.Connection) -> BooksReading:
            snaps = await _snapshots(conn, account_ids)
            rows = await conn.fetch(
                "SELECT account_id, sum(amount)::bigint AS total FROM credit_transactions "
                "WHERE account_id = ANY($1::text[]) GROUP BY account_id",
                list(account_ids),
            )
            present = await conn.fetch(hist.PRESENT_SQL, list(transaction_ids))
            grants: dict[str, dict[str, int]] = {}
            for g in await conn.fetch(
                "SELECT account_id, id, remaining FROM credit_grants"
                " WHERE account_id = ANY($1::text[]) AND remaining <> 0",
                list(account_ids),
            ):
                grants.setdefault(g["account_id"], {})[g["id"]] = g["remaining"]
            periods = await member_periods(conn, account_ids)
            return BooksReading(
                snaps, {r["account_id"]: r["total"] for r in rows}, {r["id"] for r in present},
                grants, periods,
            )  # fmt: skip

        return await in_transaction(self.pool, read, isolation="repeatable_read", readonly=True)

    async def flush_states(self) -> dict[int, FlushState]:
        """Per partition, what its last committed flush reached."""

        async def read(conn: asyncpg.Connection) -> dict[int, FlushState]:
            rows = await conn.fetch(
                "SELECT partition, last_stream_id, flushed_at, transactions FROM outbox_flushes"
            )
            return {r["partition"]: FlushState(**dict(r)) for r in rows}

        return await in_transaction(self.pool, read, readonly=True)


class BooksReading(NamedTuple):
    """What :meth:`Ledger.read_books` read, in one snapshot of PostgreSQL."""

    snapshots: dict[str, Snapshot]
    sums: dict[str, int]
    """Account -> the sum of its rows."""
    present: set[str]
    """The transaction ids asked about that the ledger holds."""
    grants: dict[str, dict[str, int]]
    """Account -> grant id -> what is left of it (grants with nothing left are not named)."""
    member_periods: dict[str, MemberPeriod]
    """Member -> what its pool paid for it in the pool's period, as the ledger holds it."""


async def _snapshots(conn: asyncpg.Connection, account_ids: Sequence[str]) -> dict[str, Snapshot]:
    rows = await conn.fetch(
        f"SELECT {_SNAPSHOT_COLUMNS} FROM user_credits WHERE account_id = ANY($1::text[])",
        list(account_ids),
    )
    return {r["account_id"]: Snapshot(**dict(r)) for r in rows}
