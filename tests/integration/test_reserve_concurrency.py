"""2,000 reserve-then-settle pairs at once on one account whose credits run out: no overdraft,
every settled cost in the ledger exactly once, and the holds nobody settled ended by their
policy by the sweep job once past their deadline, with nothing left reserved."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from tests.conftest import EngineFactory
from tests.ledger.support import assert_books_balance, config_text, ledger_rows

from quotagate.engine import CreditEngine
from quotagate.errors import InsufficientCredits
from quotagate.jobs.expire import expire_all_async
from quotagate.ledger import Ledger, flush_all

PAIRS = 2000
GATEWAYS = 4
"""Engines of their own (a connection and a batcher each), as separate gateway processes."""
OPENING = 1000
"""The pro tier's opening grant: far less than 2,000 estimates of 1 to 5 credits."""
HOLD_TTL_SECONDS = 1


@dataclass
class Outcome:
    """One pair: refused at the reservation, settled (what it charged, by which spend), or
    left to its deadline (with its policy and estimate)."""

    refused: bool = False
    settled: bool = False
    transaction_id: str | None = None
    charged: int = 0
    left_to_expire: str | None = None
    estimate: int = 0


async def _pair(engine: CreditEngine, account_id: str, rng: random.Random) -> Outcome:
    estimate, actual = rng.randint(1, 5), rng.randint(0, 9)
    unsettled = rng.random() < 0.1
    policy = rng.choice(("release", "capture"))
    await asyncio.sleep(rng.random() * 0.2)  # requests arrive over a while, settles among them
    try:
        held = await engine.reserve(
            account_id, amount=estimate, ttl_seconds=HOLD_TTL_SECONDS, max_overrun=3,
            on_expiry=policy,
        )  # fmt: skip
    except InsufficientCredits:
        return Outcome(refused=True)
    assert held.available >= 0
    if unsettled:
        return Outcome(left_to_expire=policy, estimate=estimate)
    await asyncio.sleep(0)  # the upstream's work: other pairs interleave
    settled = await engine.settle(held.hold_id, amount=actual)
    assert settled.remaining >= 0 and settled.balance >= 0
    assert settled.charged <= min(actual, estimate + 3)
    assert settled.charged + settled.shortfall == actual
    return Outcome(settled=True, transaction_id=settled.transaction_id, charged=settled.charged)


async def test_concurrent_reservations_never_overdraw_and_settle_exactly_once(
    make_engine: EngineFactory, ledger: Ledger, key_prefix: str
) -> None:
    engines = [await make_engine(config_text(8)) for _ in range(GATEWAYS)]
    engine = engines[0]
    account_id = f"{key_prefix}-reserve"
    made = await engine.upsert_account(account_id, tier="pro")
    await ledger.write_through(engine, account_id, list(made.outbox_entry_ids))
    rng = random.Random(11)
    outcomes = await asyncio.gather(
        *(_pair(engines[i % GATEWAYS], account_id, rng) for i in range(PAIRS))
    )

    settled = [o for o in outcomes if o.settled]
    expiring = [o for o in outcomes if o.left_to_expire is not None]
    refused = sum(o.refused for o in outcomes)
    assert refused > PAIRS / 2, "the credits should run out"
    assert len(settled) > 200 and len(expiring) > 20
    charged = sum(o.charged for o in settled)
    pending_capture = sum(o.estimate for o in expiring if o.left_to_expire == "capture")
    state = await engine.get_account(account_id)
    assert state.balance == OPENING - charged
    assert state.available >= 0

    # Past their deadline the sweep ends the unsettled ones: captures charge their estimate
    # (the credits were set aside for them), releases give theirs back.
    await asyncio.sleep(HOLD_TTL_SECONDS + 0.1)
    tally = await expire_all_async(engine)
    assert tally.holds == len(expiring)
    assert tally.captured == pending_capture
    assert tally.credits == sum(o.estimate for o in expiring if o.left_to_expire == "release")
    state = await engine.get_account(account_id)
    assert (state.balance, state.reserved) == (OPENING - charged - pending_capture, 0)
    assert state.balance >= 0
    stored = await engine.redis.hget(engine.keys.account(account_id).account, "r")
    assert stored == "0"

    await flush_all(engine, ledger)
    spends = [r for r in await ledger_rows(ledger, [account_id]) if r["type"] == "spend"]
    by_id = {str(r["id"]): int(r["amount"]) for r in spends}
    assert len(by_id) == len(spends)  # each transaction once
    settled_ids = {o.transaction_id: -o.charged for o in settled if o.charged}
    assert all(o.transaction_id is None for o in settled if not o.charged)
    assert {t: a for t, a in by_id.items() if t in settled_ids} == settled_ids
    expiry_rows = [r for r in spends if r["description"] == "hold expired"]
    assert len(expiry_rows) == sum(1 for o in expiring if o.left_to_expire == "capture")
    assert -sum(by_id.values()) == charged + pending_capture
    await assert_books_balance(engine, ledger, [account_id])
