"""A pool with 50 members, each with a limit, and 10,000 concurrent charges from 200 tasks on
four engines (four connections, as four gateways): no member passes its limit, the pool never
overdraws, and after the flush the books balance per member and per pool.

The members' limits add up to more than the pool holds, so both bounds refuse charges: a
member's limit first for some, the pool's balance once it runs out for the rest. A fifth of the
members spend their own credits first; their charges split into a member row and a pool row.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from typing import cast

from tests.conftest import EngineFactory

from quotagate.engine import Charge, CreditEngine
from quotagate.errors import InsufficientCredits, MemberLimitReached
from quotagate.ledger import Ledger, flush_all
from quotagate.ledger.outbox import RawEntries

CONFIG = """
partitions = 8
opening_grant = true
default_tier = "team"
[resources]
api_call = 1
[tiers.team]
credit_limit = 1000
monthly_grant = 1000
[tiers.member]
credit_limit = 0
monthly_grant = 0
"""
MEMBERS = 50
CHARGES = 10_000
TASKS = 200
GATEWAYS = 4
POOL_CREDITS = 1000 + 7000
"""The team tier's opening grant and a purchase: less than the limits add up to."""
SEED = 20261204


async def _charge(
    engine: CreditEngine, plan: list[tuple[str, int]], outcomes: list[object]
) -> None:
    """Runs its share of the plan: one charge at a time, or a few in one consume_many."""
    i = 0
    while i < len(plan):
        if i % 7 == 0:
            chunk = plan[i : i + 3]
            results = await engine.consume_many([Charge(a, "api_call", u) for a, u in chunk])
            outcomes.extend(results)
            i += len(chunk)
            continue
        account, units = plan[i]
        try:
            outcomes.append(await engine.consume(account, "api_call", units))
        except InsufficientCredits as refused:  # MemberLimitReached is one
            outcomes.append(refused)
        i += 1


async def test_fifty_members_and_ten_thousand_charges_keep_every_limit_and_the_books(
    make_engine: EngineFactory, ledger: Ledger, key_prefix: str
) -> None:
    rng = random.Random(SEED)
    engines = [await make_engine(CONFIG) for _ in range(GATEWAYS)]
    engine, pool = engines[0], f"{key_prefix}-pool"
    await engine.upsert_account(pool, tier="team")
    await engine.credit(pool, POOL_CREDITS - 1000, "earn")
    members = [f"{pool}~m{i}" for i in range(MEMBERS)]
    limits = {m: rng.randrange(100, 300) for m in members}
    own = {m: rng.randrange(10, 60) if i % 5 == 0 else 0 for i, m in enumerate(members)}
    for m in members:
        await engine.upsert_account(
            m, tier="member", member_limit=limits[m], own_credits_first=own[m] > 0
        )
        if own[m]:
            await engine.credit(m, own[m], "earn")
    assert sum(limits.values()) > POOL_CREDITS

    plan = [(rng.choice(members), rng.randrange(1, 4)) for _ in range(CHARGES)]
    shares = [plan[t::TASKS] for t in range(TASKS)]
    outcomes: list[list[object]] = [[] for _ in range(TASKS)]
    await asyncio.gather(
        *(_charge(engines[t % GATEWAYS], shares[t], outcomes[t]) for t in range(TASKS))
    )
    answers = [o for out in outcomes for o in out]
    assert len(answers) == CHARGES
    kinds = Counter(type(o).__name__ for o in answers)
    # Both bounds refused charges, and most charges went through.
    assert kinds["MemberLimitReached"] > 0 and kinds["InsufficientCredits"] > 0, kinds
    assert kinds["ChargeResult"] > CHARGES // 3, kinds
    assert set(kinds) == {"ChargeResult", "MemberLimitReached", "InsufficientCredits"}, kinds

    partition = engine.keys.partition_of(pool)
    stream = engine.keys.outbox(partition)
    entries = [f for _, f in cast(RawEntries, await engine.redis.xrange(stream))]
    pool_spends = [f for f in entries if f["a"] == pool and f["t"] == "spend"]
    paid: dict[str, int] = defaultdict(int)
    for f in pool_spends:
        paid[f["pm"]] += -int(f["amt"])
        assert int(f["bal"]) >= 0, f"the pool overdrew: {f}"
    state = {m: await engine.get_account(m) for m in members}
    for m in members:
        membership = state[m].membership
        assert membership is not None
        assert paid[m] == membership.used <= limits[m], (m, paid[m], membership, limits[m])
        assert state[m].balance >= 0
    pool_state = await engine.get_account(pool)
    assert pool_state.balance == POOL_CREDITS - sum(paid.values()) >= 0
    charged = sum(o.cost for o in answers if not isinstance(o, Exception))  # type: ignore[attr-defined]
    own_spent = sum(own[m] - state[m].balance for m in members)
    assert charged == sum(paid.values()) + own_spent
    # A member at its limit was refused for the limit; with the pool empty, for the pool.
    limited = [o for o in answers if isinstance(o, MemberLimitReached)]
    assert all(o.available < o.required for o in limited)

    await flush_all(engine, ledger)
    async with ledger.pool.acquire() as conn:
        books = {
            r["account_id"]: int(r["total"])
            for r in await conn.fetch(
                "SELECT account_id, sum(amount) AS total FROM credit_transactions"
                " WHERE account_id = ANY($1::text[]) GROUP BY account_id",
                [pool, *members],
            )
        }
        by_member = {
            r["member_id"]: -int(r["total"])
            for r in await conn.fetch(
                "SELECT member_id, sum(amount) AS total FROM credit_transactions"
                " WHERE account_id = $1 AND member_id IS NOT NULL GROUP BY member_id",
                pool,
            )
        }
    assert books[pool] == pool_state.balance
    for m in members:
        assert books.get(m, 0) == state[m].balance, m
        assert by_member.get(m, 0) == paid[m], m
