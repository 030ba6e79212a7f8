"""consume_many: the rounds a list of charges goes in, and its outcomes on a real Redis."""

from __future__ import annotations

import asyncio

import pytest
from tests.conftest import EngineFactory
from tests.engine.configs import PLAIN

from quotagate import errors
from quotagate.engine import Charge, CreditEngine
from quotagate.engine.charge_list import InFlight, rounds
from quotagate.engine.results import ChargeResult


def _c(account: str, key: str | None = None) -> Charge:
    return Charge(account, "unit", idempotency_key=key)


@pytest.mark.parametrize(
    ("charges", "expected"),
    [
        ([_c("a"), _c("b"), _c("a")], [[0, 1, 2]]),
        ([_c("a", "k1"), _c("a", "k2"), _c("b", "k3")], [[0, 1, 2]]),
        ([_c("a"), _c("a", "k1"), _c("a", "k2")], [[0, 1, 2]]),
        ([_c("a", "k1"), _c("a"), _c("b"), _c("a", "k2"), _c("a")], [[0, 2], [1, 3], [4]]),
        ([_c("a"), _c("b", "k"), _c("b"), _c("a", "k"), _c("a")], [[0, 1, 3], [2, 4]]),
        ([], []),
    ],
)
def test_rounds_keep_each_accounts_order(charges: list[Charge], expected: list[list[int]]) -> None:
    assert rounds(charges) == expected


async def _outcomes(engine: CreditEngine, charges: list[Charge]) -> list[str]:
    out = []
    for o in await engine.consume_many(charges):
        out.append(f"ok {o.remaining}" if isinstance(o, ChargeResult) else o.code)
    return out


async def test_outcomes_are_those_of_consume_one_after_the_other(
    make_engine: EngineFactory,
) -> None:
    """The same charges on twin accounts: consume_many, then consume one by one."""
    engine = await make_engine(PLAIN)
    for account in ("x1", "x2", "y1", "y2"):
        await engine.upsert_account(account, tier="free")
        await engine.credit(account, 10)

    def script(x: str, y: str) -> list[Charge]:
        return [
            Charge(x, "unit", 4),
            Charge(y, "premium_feature", 1, idempotency_key="p"),
            Charge(x, "unit", 4, idempotency_key="q"),
            Charge(x, "unit", 4),
            Charge(y, "nothing"),
            Charge(y, "unit", 0),
            Charge(x, "unit", 2),
            Charge("missing", "unit"),
            Charge(y, "premium_feature", 1, idempotency_key="p"),
            Charge(y, "premium_feature", 2, idempotency_key="p"),
            Charge(y, "unit", 5),
        ]

    together = await _outcomes(engine, script("x1", "y1"))
    alone = []
    for c in script("x2", "y2"):
        try:
            r = await engine.consume(
                c.account_id, c.resource, c.units, idempotency_key=c.idempotency_key
            )
            alone.append(f"ok {r.remaining}")
        except errors.QuotagateError as exc:
            alone.append(exc.code)
    assert together == alone
    assert together == [
        "ok 6", "ok 5", "ok 2", "insufficient_credits", "unknown_resource", "invalid_amount",
        "ok 0", "account_not_found", "ok 5", "idempotency_conflict", "ok 0",
    ]  # fmt: skip


async def test_an_unavailable_redis_is_each_charges_answer(make_engine: EngineFactory) -> None:
    engine = await make_engine(PLAIN)
    await engine.upsert_account("z", tier="free")
    await engine.aclose()
    outcomes = await engine.consume_many([Charge("z", "unit"), Charge("z", "nothing")])
    assert [o.code for o in outcomes if isinstance(o, errors.QuotagateError)] == [
        "backend_unavailable", "unknown_resource",
    ]  # fmt: skip


async def test_rounds_wait_for_room_in_flight() -> None:
    """A round that would pass the limit waits until enough is answered; a round larger than
    the limit goes when nothing else is in flight."""
    in_flight = InFlight(limit=3)
    order: list[str] = []

    async def round_of(name: str, charges: int, hold: asyncio.Event) -> None:
        async with in_flight.room_for(charges):
            order.append(f"{name} in at {in_flight.charges}")
            await hold.wait()

    first_done, second_done, big_done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(round_of("first", 2, first_done))
    await asyncio.sleep(0)
    second = asyncio.create_task(round_of("second", 2, second_done))
    await asyncio.sleep(0.01)
    assert order == ["first in at 2"]
    first_done.set()
    await asyncio.sleep(0.01)
    assert order == ["first in at 2", "second in at 2"]
    big = asyncio.create_task(round_of("big", 5, big_done))
    await asyncio.sleep(0.01)
    assert len(order) == 2
    second_done.set()
    await asyncio.sleep(0.01)
    assert order[-1] == "big in at 5"
    big_done.set()
    await asyncio.gather(first, second, big)
    assert in_flight.charges == 0
