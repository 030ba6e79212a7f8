"""Charges of one account that meet in a batch run as one script call, exactly as they would
one after the other: same replies, same balances, same outbox entries."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from tests.conftest import EngineFactory
from tests.engine.batchers import batcher_of
from tests.engine.configs import PLAIN
from tests.engine.snapshot import keyspace

from quotagate import errors, ids
from quotagate.engine import CreditEngine
from quotagate.engine.batching import _combined
from quotagate.ledger.outbox import RawEntries


def _args(account: str, cost: int, idem: str = "") -> list[str]:
    return [ids.new_id(), account, str(cost), "unit", str(cost), "d", "", idem, "", "86400000"]


async def _raw(engine: CreditEngine, account: str, args: list[str]) -> Any:
    keys = engine.keys.script_keys(account)
    return await engine.runner.run(engine.scripts["consume"], keys, args)


def _outbox(engine: CreditEngine, entries: RawEntries) -> list[tuple[tuple[str, str], ...]]:
    # Everything but the stream id and the timestamp, which differ between two runs.
    return [
        tuple(sorted((k, v) for k, v in f.items() if k not in ("ts", "id"))) for _, f in entries
    ]


async def _state(engine: CreditEngine, account: str) -> tuple[Any, ...]:
    acct = await engine.get_account(account)
    stream = engine.keys.outbox(engine.keys.partition_of(account))
    outbox = cast(RawEntries, await engine.redis.xrange(stream))
    mine = [e for e in outbox if e[1]["a"] == account and e[1]["t"] == "spend"]
    return acct.balance, acct.monthly_credits, acct.purchased_credits, _outbox(engine, mine)


@pytest.mark.parametrize(
    ("tier", "grant", "costs"),
    [
        ("free", 20, [1, 2, 3]),  # all pass
        ("free", 7, [3, 5, 2, 9, 1]),  # refused in the middle, later smaller ones pass
        ("limited", 1000, [1] * 45),  # a burst of 40, then rate limited
        ("pro", 0, [1, 1]),  # nothing to spend
    ],
)
async def test_one_call_for_several_charges_equals_them_one_by_one(
    make_engine: EngineFactory, tier: str, grant: int, costs: list[int]
) -> None:
    engine = await make_engine(PLAIN)
    for account in ("together", "alone"):
        await engine.upsert_account(account, tier=tier)
        if grant:
            await engine.credit(account, grant)
    together = await _raw(engine, "together", [a for c in costs for a in _args("together", c)])
    alone = [await _raw(engine, "alone", _args("alone", c)) for c in costs]
    assert len(together) == len(costs)

    def shape(reply: list[str]) -> list[str]:
        # Not the transaction id, nor what depends on the instant (the rate limit's reset).
        if reply[0] == "ok":
            return reply[:1] + reply[2:8]
        return reply[:2] if reply[1] == "rate_limited" else reply

    assert [shape(r) for r in together] == [shape(r) for r in alone]
    t, a = await _state(engine, "together"), await _state(engine, "alone")
    assert t[:3] == a[:3]
    assert [dict(e) | {"a": ""} for e in t[3]] == [dict(e) | {"a": ""} for e in a[3]]


async def test_account_errors_answer_every_charge(make_engine: EngineFactory) -> None:
    engine = await make_engine(PLAIN)
    await engine.upsert_account("banned", status="banned")
    for account, code in (("banned", "account_banned"), ("nobody", "account_not_found")):
        reply = await _raw(engine, account, _args(account, 1) + _args(account, 1))
        assert reply == [["err", code], ["err", code]]


@pytest.mark.parametrize(
    "second",
    [
        ["t2", "acct", "0", "unit", "1", "", "", "", "", "1000"],  # a bad cost
        ["t2", "other", "1", "unit", "1", "", "", "", "", "1000"],  # another account
        ["t2", "acct", "1", "unit", "1", "", "", "req-1", "fp", "1000"],  # an idempotency key
        ["t2", "acct", "1", "unit", "1", "", "", "", ""],  # one argument short
    ],
)
async def test_one_bad_charge_refuses_the_call_before_anything_is_written(
    make_engine: EngineFactory, redis_url: str, key_prefix: str, second: list[str]
) -> None:
    engine = await make_engine(PLAIN)
    await engine.upsert_account("acct")
    await engine.credit("acct", 50)
    before = keyspace(redis_url, key_prefix)
    reply = await _raw(engine, "acct", _args("acct", 1) + second)
    flat = reply if reply and isinstance(reply[0], str) else reply[0]
    assert flat[:2] == ["err", "invalid_argument"]
    assert keyspace(redis_url, key_prefix) == before


def _count_script_calls(engine: CreditEngine, account: str) -> list[int]:
    """From now on, the charges each script call sent to ``account``'s master carries."""
    commands: list[int] = []
    runner = batcher_of(engine, account)
    send = runner._send

    def counted(pipe: Any, batch: list[Any]) -> None:
        commands.extend(len(group) for group in _combined(batch))
        send(pipe, batch)

    runner._send = counted  # type: ignore[method-assign]
    return commands


async def test_concurrent_charges_of_one_account_share_a_script_call(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(PLAIN)
    await engine.upsert_account("acct")
    await engine.credit("acct", 30)
    commands = _count_script_calls(engine, "acct")
    results = await asyncio.gather(
        *(engine.consume("acct", "unit") for _ in range(40)), return_exceptions=True
    )
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, errors.InsufficientCredits)]
    assert (len(ok), len(refused)) == (30, 10)
    assert sorted(r.remaining for r in ok) == list(range(30))
    assert len({r.transaction_id for r in ok}) == 30
    assert max(commands) > 1 and sum(commands) == 40
    assert (await engine.get_account("acct")).balance == 0


async def test_charges_with_an_idempotency_key_go_alone(make_engine: EngineFactory) -> None:
    engine = await make_engine(PLAIN)
    await engine.upsert_account("acct")
    await engine.credit("acct", 30)
    commands = _count_script_calls(engine, "acct")
    first = await asyncio.gather(
        *(engine.consume("acct", "unit", idempotency_key=f"k{i % 5}") for i in range(10))
    )
    assert commands and max(commands) == 1
    assert len({r.transaction_id for r in first}) == 5  # five keys, five charges
    assert sum(r.replayed for r in first) == 5
    assert (await engine.get_account("acct")).balance == 25
