"""A grant expiring while 200 tasks spend from it, through four engines (four connections, as
four gateways), with the expiry sweep running beside them: every credit of the grant is
either spent or expired, none both, and the ledger agrees with Redis after the flush.

The grant has priority 0, so every charge takes from it while it lasts; it holds far more
than the tasks can spend before its expiry, so it expires with credits left, whether by a
charge's lazy expiry or by the sweep, whichever runs first.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import cast

from tests.conftest import EngineFactory
from tests.ledger.support import config_text, ledger_rows

from quotagate.engine import CreditEngine
from quotagate.ledger import Ledger, flush_all
from quotagate.ledger.outbox import RawEntries

TASKS = 200
GATEWAYS = 4
GRANT = 1_000_000
"""Far more than the tasks spend in the grant's lifetime: it expires with credits left."""
PURCHASED = 100_000
"""What the charges take after the grant expired (the opening monthly grant goes first)."""
GRANT_LIFETIME_MS = 250
SPENDING_SECONDS = 0.6
"""The tasks spend this long from the grant's creation: well past its expiry."""


async def _spend_until(engine: CreditEngine, account_id: str, stop: float) -> list[str]:
    """Charges of 1 credit until ``stop`` (monotonic): the transaction ids charged. The
    account never runs short (InsufficientCredits fails the test: it is mis-sized)."""
    charged = []
    while time.monotonic() < stop:
        charged.append((await engine.consume(account_id, "api_call", 1)).transaction_id)
    return charged


async def _sweep_until(engine: CreditEngine, partition: int, stop: float) -> int:
    """The expiry sweep, over and over until ``stop``: the grants it expired."""
    expired = 0
    while time.monotonic() < stop:
        expired += (await engine.expire_due_grants(partition))[0]
        await asyncio.sleep(0.002)
    return expired


def _drawn_from(fields: dict[str, str], grant_id: str) -> int:
    """The credits a spend's entry took from the grant (its ``gd`` field)."""
    for draw in filter(None, fields.get("gd", "").split(",")):
        drawn_id, _, credits = draw.rpartition(":")
        if drawn_id == grant_id:
            return int(credits)
    return 0


async def test_a_grant_expiring_under_200_spending_tasks_is_spent_or_expired_never_both(
    make_engine: EngineFactory, ledger: Ledger, key_prefix: str
) -> None:
    engines = [await make_engine(config_text(8)) for _ in range(GATEWAYS)]
    engine, account_id = engines[0], f"{key_prefix}-race"
    await engine.upsert_account(account_id, tier="pro")  # opening grant: 1000 monthly
    await engine.credit(account_id, PURCHASED)
    seconds, micros = await engine.redis.time()
    expires_at = datetime.fromtimestamp(int(seconds), UTC) + timedelta(
        microseconds=int(micros), milliseconds=GRANT_LIFETIME_MS
    )
    grant_id = (await engine.grant(account_id, GRANT, priority=0, expires_at=expires_at)).grant_id

    stop = time.monotonic() + SPENDING_SECONDS
    partition = engine.keys.partition_of(account_id)
    sweeper = asyncio.create_task(_sweep_until(engines[1], partition, stop))
    spent = await asyncio.gather(
        *(_spend_until(engines[i % GATEWAYS], account_id, stop) for i in range(TASKS))
    )
    swept = await sweeper
    charges = sum(len(ids) for ids in spent)

    stream = engine.keys.outbox(partition)
    entries = [f for _, f in cast(RawEntries, await engine.redis.xrange(stream))]
    entries = [f for f in entries if f["a"] == account_id]
    expiries = [i for i, f in enumerate(entries) if f["t"] == "expire" and f.get("gr") == grant_id]
    assert len(expiries) == 1, f"the grant's expire rows: {len(expiries)}"
    expired = -int(entries[expiries[0]]["amt"])
    spends = [(i, f) for i, f in enumerate(entries) if f["t"] == "spend"]
    assert len(spends) == charges
    before = [f for i, f in spends if i < expiries[0]]
    after = [f for i, f in spends if i > expiries[0]]
    # The race happened: charges before and after the expiry, the grant not spent out.
    assert before and after and expired > 0, (len(before), len(after), expired)
    assert all(_drawn_from(f, grant_id) == 1 for f in before), "a charge before the expiry"
    assert not any(_drawn_from(f, grant_id) for f in after), "a charge drew on an expired grant"
    drawn = sum(_drawn_from(f, grant_id) for _, f in spends)
    assert drawn + expired == GRANT
    assert swept in (0, 1)

    state = await engine.get_account(account_id)
    assert state.balance == 1000 + PURCHASED + GRANT - charges - expired
    assert grant_id not in {g.id for g in state.grants}

    await flush_all(engine, ledger)
    rows = await ledger_rows(ledger, [account_id])
    assert sum(int(r["amount"]) for r in rows) == state.balance
    assert len({r["id"] for r in rows}) == len(rows)  # each transaction once
    assert [int(r["amount"]) for r in rows if r["type"] == "expire"] == [-expired]
    assert sum(1 for r in rows if r["type"] == "spend") == charges
