"""The gateway's hold on the ledger: present when Postgres answers, reconnected when it returns.

The gateway starts while Postgres is down (charging goes on from Redis; money-in answers
``durable: false`` and stays in the outbox), but refuses to start when Postgres answers with a
schema behind the code. While the ledger is away, a background task retries every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Literal

import asyncpg

from quotagate import metrics
from quotagate.auth.store import TIMEOUT_SECONDS, asyncpg_url
from quotagate.engine import CreditEngine
from quotagate.errors import BackendUnavailable, ConfigError
from quotagate.ledger import HistoryPage, Ledger

log = logging.getLogger(__name__)

RECONNECT_SECONDS = 3.0
"""How often a gateway without its ledger tries Postgres again."""

LedgerState = Literal["ok", "down", "schema_behind"]


class LedgerLink:
    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.ledger: Ledger | None = None
        self.state: LedgerState = "down"
        self._task: asyncio.Task[None] | None = None

    async def _connect(self) -> None:
        ledger = await asyncio.wait_for(Ledger.connect(self.database_url), TIMEOUT_SECONDS * 2)
        try:
            await asyncio.wait_for(ledger.ensure_current(), TIMEOUT_SECONDS * 2)
        except BaseException:
            await ledger.aclose()
            raise
        self.ledger, self.state = ledger, "ok"

    async def start(self) -> None:
        """Connect; ConfigError (schema behind) stops the start, a down Postgres does not."""
        try:
            await self._connect()
        except ConfigError:
            raise
        except Exception as exc:
            log.warning("ledger unavailable at start, retrying in the background: %s", exc)
            self._task = asyncio.create_task(self._reconnect(), name="quotagate-ledger-reconnect")

    async def _reconnect(self) -> None:
        while self.ledger is None:
            await asyncio.sleep(RECONNECT_SECONDS)
            try:
                await self._connect()
            except ConfigError as exc:
                self.state = "schema_behind"
                log.error("ledger schema is behind: %s", exc.detail)
            except Exception as exc:
                log.debug("ledger still unavailable: %s", exc)
        log.info("ledger connected")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.ledger is not None:
            await self.ledger.aclose()
            self.ledger = None

    async def write_through(
        self, engine: CreditEngine, account_id: str, entry_ids: list[str]
    ) -> bool:
        """Copy money-in to Postgres now. False (never an error) when Postgres did not take it:
        the outbox still carries the entries and the flush will copy them."""
        durable = False
        if self.ledger is not None and entry_ids:
            try:
                durable = await self.ledger.write_through(engine, account_id, entry_ids)
            except Exception as exc:  # the write already happened in Redis: never fail it here
                log.warning("write-through failed for %s: %s", account_id, exc)
        metrics.WRITE_THROUGH.labels("ok" if durable else "failed").inc()
        return durable

    async def history(
        self, engine: CreditEngine, account_id: str, limit: int, before: str | None
    ) -> HistoryPage:
        if self.ledger is None:
            raise BackendUnavailable("the ledger (Postgres) is unavailable")
        return await self.ledger.history(engine, account_id, limit=limit, before=before)

    async def ping(self) -> LedgerState:
        if self.ledger is None:
            return self.state
        try:
            await asyncio.wait_for(self.ledger.ping(), TIMEOUT_SECONDS)
        except Exception:
            return "down"
        return "ok"


async def ledger_holds_accounts(database_url: str) -> bool | None:
    """Does the ledger hold any account? None when Postgres cannot say (then a fresh Redis is
    not trusted to be a fresh deployment: it waits for `quotagate recover`)."""
    try:
        conn = await asyncpg.connect(asyncpg_url(database_url), timeout=TIMEOUT_SECONDS)
    except Exception:
        return None
    try:
        return bool(
            await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM user_credits)", timeout=TIMEOUT_SECONDS
            )
        )
    except Exception:
        return None
    finally:
        await conn.close(timeout=TIMEOUT_SECONDS)
