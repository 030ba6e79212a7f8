"""Batch charges under load: concurrent batches of random charges over accounts with small
balances, through a real gateway (uvicorn, HTTP) on real Redis, then flushed to PostgreSQL.

What is checked, per account: the charges that were made form one history, each taking its
cost from the balance the one before it left (so none was counted twice or against a balance
that was already spent, and none overdrew); every refusal names a balance the account really
had, no larger than the one its batch's earlier charge of the account left; keyed charges
sent again replay the first answer; after the flush the ledger holds each charge once and the
books balance. The default size runs in the suite; a larger one is a documented command:

    QUOTAGATE_BATCH_LOAD=400x1000x2000 pytest tests/integration/test_batch_charges.py
    (batches x charges per batch x accounts)
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.ledger.support import assert_books_balance, ledger_rows
from tests.support.gateway import (  # noqa: F401 - fixtures
    api_keys,
    gateway_settings,
    migrated_database_url,
    running_gateway,
)

from quotagate.config import Config, parse_config
from quotagate.engine import CreditEngine
from quotagate.ledger import Ledger, flush_all

BATCHES, CHARGES, ACCOUNTS = (
    int(n) for n in os.environ.get("QUOTAGATE_BATCH_LOAD", "100x1000x500").split("x")
)
BALANCE = 60
"""Every account's opening balance: a few dozen charges' worth, so most charges are refused
and every account is fought over by many batches at once."""
PRICES = {"api_call": 1, "premium_feature": 3}
KEYED = 0.2
"""Share of charges with an idempotency key."""

CONFIG_TEXT = f"""
partitions = 16
opening_grant = true
default_tier = "small"
[resources]
api_call = 1
premium_feature = 3
[tiers.small]
credit_limit = {BALANCE}
monthly_grant = {BALANCE}
"""

Item = dict[str, Any]
Result = dict[str, Any]


def _batch(rng: random.Random, accounts: list[str], number: int) -> list[Item]:
    items: list[Item] = []
    for i in range(CHARGES):
        if items and rng.random() < 0.02:  # the same keyed charge again: a replay
            earlier = rng.choice(items)
            if "idempotency_key" in earlier:
                items.append(dict(earlier))
                continue
        item: Item = {
            "account_id": rng.choice(accounts),
            "resource": rng.choice(list(PRICES)),
            "units": rng.randint(1, 2),
        }
        if rng.random() < KEYED:
            item["idempotency_key"] = f"b{number}-{i}"
        items.append(item)
    return items


def _cost(item: Item) -> int:
    return PRICES[item["resource"]] * int(item["units"])


async def _send_all(url: str, key: str, batches: list[list[Item]]) -> list[list[Result]]:
    limits = httpx.Limits(max_connections=len(batches))
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one(items: list[Item]) -> list[Result]:
            r = await client.post(
                "/v1/charges",
                json={"charges": items},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert r.status_code == 200, r.text
            results: list[Result] = r.json()["results"]
            assert len(results) == len(items)
            return results

        return await asyncio.gather(*(one(b) for b in batches))


def _pairs(
    batches: list[list[Item]], answers: list[list[Result]]
) -> Iterator[tuple[int, Item, Result]]:
    for number, (items, results) in enumerate(zip(batches, answers, strict=True)):
        for item, result in zip(items, results, strict=True):
            yield number, item, result


def _check_histories(
    batches: list[list[Item]], answers: list[list[Result]], balances: dict[str, int]
) -> dict[str, str]:
    """Per account, the charges made form one chain of balances from BALANCE down to the
    final balance; every refusal names a balance of that chain. Returns the transaction id of
    each charge made, by id."""
    made: dict[str, list[tuple[int, int]]] = defaultdict(list)  # account -> (remaining, cost)
    refused: dict[str, list[int]] = defaultdict(list)
    charged: dict[str, str] = {}
    for _, item, result in _pairs(batches, answers):
        account = item["account_id"]
        if result["status"] == 200 and not result.get("replayed"):
            assert result["cost"] == _cost(item)
            made[account].append((result["remaining"], result["cost"]))
            assert result["transaction_id"] not in charged
            charged[result["transaction_id"]] = account
        elif result["status"] == 402:
            problem = result["problem"]
            assert problem["code"] == "insufficient_credits"
            assert problem["required"] == _cost(item) > problem["available"]
            refused[account].append(problem["available"])
        else:
            assert result["status"] == 200 and result["replayed"] is True, result
    for account, final in balances.items():
        chain = sorted(made[account], reverse=True)
        level = BALANCE
        for remaining, cost in chain:
            assert remaining == level - cost, (account, chain)
            level = remaining
        assert level == final >= 0
        seen = {BALANCE, *(remaining for remaining, _ in chain)}
        assert set(refused[account]) <= seen, account
    return charged


def _check_batch_order(batches: list[list[Item]], answers: list[list[Result]]) -> None:
    """Within one batch, one account's answers follow the batch's order: each charge or
    refusal found at most the balance its batch's previous answer for the account left."""
    for items, results in zip(batches, answers, strict=True):
        ceiling: dict[str, int] = {}
        for item, result in zip(items, results, strict=True):
            account = item["account_id"]
            highest = ceiling.get(account, BALANCE)
            if result.get("replayed"):
                continue
            if result["status"] == 200:
                assert result["remaining"] + result["cost"] <= highest, (account, result)
                ceiling[account] = result["remaining"]
            else:
                assert result["problem"]["available"] <= highest, (account, result)
                ceiling[account] = result["problem"]["available"]


def _check_replays(batches: list[list[Item]], answers: list[list[Result]]) -> int:
    """A keyed charge sent again in its batch answers what its first sending answered."""
    replays = 0
    for items, results in zip(batches, answers, strict=True):
        first: dict[tuple[str, str], Result] = {}
        for item, result in zip(items, results, strict=True):
            if "idempotency_key" not in item:
                continue
            key = (item["account_id"], item["idempotency_key"])
            if key not in first:
                first[key] = result
                continue
            replays += 1
            if first[key]["status"] == 200:
                assert result == {**first[key], "replayed": True}
            else:
                assert result["status"] == first[key]["status"]
    return replays


async def _balances(engine: CreditEngine, accounts: list[str]) -> dict[str, int]:
    return {a: (await engine.get_account(a)).balance for a in accounts}


@pytest.fixture
def config() -> Config:
    return parse_config(CONFIG_TEXT)


async def test_concurrent_batches_charge_as_single_consumes_would(
    redis_url: str,
    migrated_database_url: str,  # noqa: F811 - the fixture
    api_keys: dict[str, str],  # noqa: F811 - the fixture
    key_prefix: str,
    config: Config,
) -> None:
    rng = random.Random(17)
    run = uuid.uuid4().hex[:8]
    accounts = [f"batch-{run}-{n}" for n in range(ACCOUNTS)]
    engine = CreditEngine.from_url(redis_url, config, prefix=key_prefix)
    ledger = await Ledger.connect(migrated_database_url)
    try:
        await engine.initialize()
        for account in accounts:
            await engine.upsert_account(account)
        batches = [_batch(rng, accounts, n) for n in range(BATCHES)]
        settings = dataclasses.replace(
            gateway_settings(redis_url, migrated_database_url, key_prefix),
            flush_trigger_entries=10**9,  # no early flush jobs: the test flushes
        )
        with running_gateway(settings, config, fresh=False) as gateway:
            answers = await _send_all(gateway.url, api_keys["service"], batches)
            # Every batch again, as after a lost answer: its keyed charges replay.
            keyed = [[i for i in items if "idempotency_key" in i] for items in batches]
            assert all(keyed)
            again = await _send_all(gateway.url, api_keys["service"], keyed)

        balances = await _balances(engine, accounts)
        charged = _check_histories(batches, answers, balances)
        _check_batch_order(batches, answers)
        assert _check_replays(batches, answers) > 0
        first_keyed = [
            [r for i, r in zip(items, results, strict=True) if "idempotency_key" in i]
            for items, results in zip(batches, answers, strict=True)
        ]
        for before, after in zip(first_keyed, again, strict=True):
            for b, a in zip(before, after, strict=True):
                if b["status"] == 200:
                    assert a == {**b, "replayed": True}
                else:
                    assert (
                        a["status"] == 402
                        and a["problem"]["available"] <= (b["problem"]["available"])
                    )
        assert await _balances(engine, accounts) == balances  # the replays charged nothing
        assert sum(BALANCE - b for b in balances.values()) == sum(
            r["cost"] for _, _, r in _pairs(batches, answers)
            if r["status"] == 200 and not r.get("replayed")
        )  # fmt: skip

        await flush_all(engine, ledger)
        rows = await ledger_rows(ledger, accounts)
        spends = {r["id"]: r["account_id"] for r in rows if r["type"] == "spend"}
        assert {str(k): v for k, v in spends.items()} == charged
        await assert_books_balance(engine, ledger, accounts)
    finally:
        await ledger.aclose()
        await engine.aclose()
