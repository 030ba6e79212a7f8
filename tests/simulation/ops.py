"""The operations of traffic: each sends real HTTP requests, checks each answer against what
the model allows, then applies the answer to the model. Each returns the accounts it touched
(their Redis state is compared with the model after the step)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from tests.simulation.calls import Answer
from tests.simulation.model import COSTS, NOT_DURABLE, TIERS, AccountModel, Remembered, Spend
from tests.simulation.world import World

Operation = Callable[[World], Awaitable[list[str]]]

HOLD_TTL_SECONDS = 3600
"""Longer than any run: a hold ends only when the simulation ends it (or Redis loses it)."""


async def write(
    world: World, account_id: str, path: str, body: Any, *, scope: str = "service"
) -> tuple[Answer, str]:
    """A write with a fresh idempotency key. Some writes are sent and hung up on (the answer
    lost after the script ran); any write whose outcome is unknown is settled by retrying it
    with the same key. Returns the answer and the key."""
    key = world.new_key()
    full = f"/v1/accounts/{account_id}{path}"
    gateway = world.gateway()
    if world.rng.random() < 0.05:
        await world.gateways.send_and_hang_up(gateway, full, scope=scope, body=body, key=key)
        world.stats["hung_up"] += 1
        answer = None
    else:
        answer = await world.gateways.call(gateway, "POST", full, scope=scope, body=body, key=key)
    if answer is None:
        world.stats["settled"] += 1
        answer = await world.gateways.settle(gateway, full, scope=scope, body=body, key=key)
        world.stats["settled_as_replay"] += answer.replayed
    return answer, key


def remember(world: World, account_id: str, path: str, body: Any, key: str, answer: Answer,
             scope: str = "service") -> None:  # fmt: skip
    world.model.remembered.append(Remembered(account_id, path, body, key, scope, answer.body))


def pick_account(world: World, *, active: bool = False) -> AccountModel:
    accounts = [a for a in world.model.accounts.values() if not active or a.status == "active"]
    return accounts[world.rng.randrange(len(accounts))] if accounts else pick_any(world)


def pick_any(world: World) -> AccountModel:
    accounts = list(world.model.accounts.values())
    return accounts[world.rng.randrange(len(accounts))]


# -- accounts -------------------------------------------------------------------------------


async def open_account(world: World) -> list[str]:
    account_id = f"acct-{world.model.opened:04d}"
    world.model.opened += 1
    tier = world.rng.choice(sorted(TIERS))
    overdraft = world.rng.choice([0, 0, 0, 10, 50])
    body = {"tier": tier, "overdraft_limit": overdraft}
    answer = await world.gateways.settle(
        world.gateway(), f"/v1/accounts/{account_id}", scope="admin", body=body,
        key=world.new_key(), method="PUT",
    )  # fmt: skip
    world.expect(answer.status == 201, f"opening {account_id}", answer)
    account = AccountModel(account_id, tier, overdraft, monthly=TIERS[tier][0])
    account.opened_durable = bool(answer.body.get("durable", True))
    world.expect(answer.body["balance"] == account.balance, "the opening grant", answer)
    world.model.accounts[account_id] = account
    world.note(f"opened {account_id} ({tier}, overdraft {overdraft})")
    return [account_id]


async def set_status(world: World) -> list[str]:
    account = pick_any(world)
    status = "banned" if account.status == "active" else "active"
    answer = await world.gateways.settle(
        world.gateway(), f"/v1/accounts/{account.account_id}", scope="admin",
        body={"status": status}, key=world.new_key(), method="PUT",
    )  # fmt: skip
    world.expect(answer.status == 200, "a status change", answer)
    account.status = status
    world.note(f"{account.account_id} is now {status}")
    return [account.account_id]


# -- charges --------------------------------------------------------------------------------


async def consume(world: World) -> list[str]:
    account = pick_account(world, active=world.rng.random() < 0.95)
    resource = world.rng.choice(sorted(COSTS))
    units = world.rng.choice([1, 1, 2, 3, 10, 40])
    cost = COSTS[resource] * units
    body = {"resource": resource, "units": units}
    answer, key = await write(world, account.account_id, "/consume", body)
    world.note(f"consume {cost} from {account.account_id} -> {answer.status}")
    if account.status != "active":
        world.expect(answer.code == "account_banned", "a charge to a banned account", answer)
    elif account.available < cost:
        world.expect(
            answer.status == 402 and answer.body["available"] == account.available,
            f"a charge of {cost} with {account.available} available must be refused",
            answer,
        )
    else:
        world.expect(answer.status == 200, f"a charge of {cost} with {account.available}", answer)
        world.expect(answer.body["remaining"] == account.available - cost, "remaining", answer)
        account.spend(cost)
        charged(world, account, answer, cost)
        remember(world, account.account_id, "/consume", body, key, answer)
    return [account.account_id]


def charged(world: World, account: AccountModel, answer: Answer, cost: int) -> None:
    txn = answer.body["transaction_id"]
    world.model.acknowledge(txn, "spend")
    world.model.spends[txn] = Spend(account.account_id, cost)


async def burst(world: World) -> list[str]:
    """Concurrent charges of one account, without idempotency keys (the gateway may combine
    them into one script call): exactly as many pass as the balance allows."""
    account = pick_account(world, active=True)
    if account.status != "active":
        return []
    count, units = world.rng.randint(3, 8), world.rng.choice([1, 5, 20])
    path = f"/v1/accounts/{account.account_id}/consume"
    body = {"resource": "api_call", "units": units}
    answers = await asyncio.gather(
        *(world.gateways.call(i, "POST", path, scope="service", body=body) for i in range(count))
    )
    world.expect(all(a is not None for a in answers), "a burst of charges went unanswered")
    passed = [a for a in answers if a is not None and a.status == 200]
    expected = min(count, max(account.available, 0) // units)
    world.note(f"burst of {count} x {units} on {account.account_id}: {len(passed)} passed")
    world.expect(
        len(passed) == expected and all(a is not None and a.status in (200, 402) for a in answers),
        f"{len(passed)} of {count} charges of {units} passed with {account.available} available,"
        f" expected {expected}",
    )
    for answer in passed:
        account.spend(units)
        charged(world, account, answer, units)
    return [account.account_id]


async def bad_input(world: World) -> list[str]:
    account = pick_any(world)
    body, code = world.rng.choice([
        ({"resource": "api_call", "units": 0}, "invalid_amount"),
        ({"resource": "api_call", "units": "5"}, "invalid_amount"),
        ({"resource": "api_call", "units": 1.0}, "invalid_amount"),
        ({"resource": "no_such_thing"}, "unknown_resource"),
    ])  # fmt: skip
    answer, _ = await write(world, account.account_id, "/consume", body)
    world.note(f"bad input {body} -> {answer.status} {answer.code}")
    world.expect(400 <= answer.status < 500 and answer.code == code, f"{body} needs {code}", answer)
    return [account.account_id]


# -- money in -------------------------------------------------------------------------------


async def grant(world: World) -> list[str]:
    account = pick_any(world)
    amount, kind = world.rng.randint(1, 300), world.rng.choice(["grant", "earn"])
    body = {"amount": amount, "type": kind}
    answer, key = await write(world, account.account_id, "/credits", body, scope="admin")
    world.note(f"{kind} {amount} to {account.account_id} -> {answer.status}")
    world.expect(answer.status == 200, f"a {kind} of {amount}", answer)
    world.expect(answer.body["balance"] == account.balance + amount, "balance after", answer)
    if world.postgres_down:
        world.expect(not answer.body["durable"], "durable while PostgreSQL is down", answer)
    account.purchased += amount
    acknowledge_credit(world, answer, kind)
    remember(world, account.account_id, "/credits", body, key, answer, "admin")
    return [account.account_id]


def acknowledge_credit(world: World, answer: Answer, kind: str) -> None:
    durable = answer.body["durable"]
    world.model.acknowledge(answer.body["transaction_id"], kind + ("" if durable else NOT_DURABLE))


async def refund(world: World) -> list[str]:
    account = pick_any(world)
    if not world.named_refunds:
        plain: dict[str, Any] = {"amount": world.rng.randint(1, 30)}
        touched, _ = await credit_refund(world, account, plain, True)
        return touched
    spends = [(t, s) for t, s in world.model.spends.items() if s.account_id == account.account_id]
    if not spends:
        return []
    txn, spend = spends[world.rng.randrange(len(spends))]
    left = spend.charged - spend.refunded
    over = world.rng.random() < 0.2 or left == 0
    amount = left + world.rng.randint(1, 5) if over else world.rng.randint(1, left)
    fields: dict[str, Any] = {"amount": amount, "refund_of": txn}
    touched, applied = await credit_refund(world, account, fields, not over)
    if applied:
        spend.refunded += amount
    return touched


async def credit_refund(
    world: World, account: AccountModel, fields: dict[str, Any], allowed: bool
) -> tuple[list[str], bool]:
    """The refund, checked against the model; whether it was applied."""
    body = {**fields, "type": "refund"}
    answer, key = await write(world, account.account_id, "/credits", body)
    world.note(f"refund {fields} to {account.account_id} -> {answer.status}")
    if answer.code == "ledger_unavailable":
        # A spend that left the outbox is counted in the ledger: refused while it is down.
        world.expect(
            world.postgres_down, "ledger_unavailable only while PostgreSQL is down", answer
        )
        world.expect(answer.status == 503, "ledger_unavailable is a 503", answer)
        world.stats["refunds_refused_ledger_down"] += 1
        return [account.account_id], False
    if not allowed:
        world.expect(400 <= answer.status < 500, "a refund above what its spend charged", answer)
        return [account.account_id], False
    world.expect(answer.status == 200, f"a refund of {fields}", answer)
    world.expect(answer.body["balance"] == account.balance + body["amount"], "balance", answer)
    account.purchased += body["amount"]
    acknowledge_credit(world, answer, "refund")
    remember(world, account.account_id, "/credits", body, key, answer)
    return [account.account_id], True


# -- holds ----------------------------------------------------------------------------------


async def hold(world: World) -> list[str]:
    account = pick_account(world, active=world.rng.random() < 0.95)
    amount = world.rng.choice([1, 5, 20, 60, 200])
    body = {"amount": amount, "ttl_seconds": HOLD_TTL_SECONDS}
    answer, key = await write(world, account.account_id, "/holds", body)
    world.note(f"hold {amount} on {account.account_id} -> {answer.status}")
    if account.status != "active":
        world.expect(answer.code == "account_banned", "a hold on a banned account", answer)
    elif account.available < amount:
        world.expect(answer.status == 402, f"a hold of {amount} > {account.available}", answer)
    else:
        world.expect(answer.status == 201, f"a hold of {amount}", answer)
        world.expect(answer.body["available"] == account.available - amount, "available", answer)
        account.holds[answer.body["hold_id"]] = amount
        remember(world, account.account_id, "/holds", body, key, answer)
    return [account.account_id]


def pick_hold(world: World) -> tuple[AccountModel, str] | None:
    open_holds = [(a, h) for a in world.model.accounts.values() for h in sorted(a.holds)]
    return open_holds[world.rng.randrange(len(open_holds))] if open_holds else None


async def capture(world: World) -> list[str]:
    picked = pick_hold(world)
    if picked is None:
        return []
    account, hold_id = picked
    held = account.holds[hold_id]
    amount = world.rng.choice([None, held, world.rng.randint(1, held), held + 1])
    body = {} if amount is None else {"amount": amount}
    answer, key = await write(world, account.account_id, f"/holds/{hold_id}/capture", body)
    world.note(f"capture {amount} of hold {held} on {account.account_id} -> {answer.status}")
    if amount is not None and amount > held:
        world.expect(answer.status == 422, f"capturing {amount} of a hold of {held}", answer)
        return [account.account_id]
    cost = held if amount is None else amount
    world.expect(answer.status == 200 and answer.body["cost"] == cost, "a capture", answer)
    del account.holds[hold_id]
    account.spend(cost, from_hold=True)
    world.expect(answer.body["remaining"] == account.available, "remaining", answer)
    charged(world, account, answer, cost)
    remember(world, account.account_id, f"/holds/{hold_id}/capture", body, key, answer)
    return [account.account_id]


async def release(world: World) -> list[str]:
    picked = pick_hold(world)
    if picked is None:
        return []
    account, hold_id = picked
    answer, key = await write(world, account.account_id, f"/holds/{hold_id}/release", {})
    world.note(f"release hold {hold_id} on {account.account_id} -> {answer.status}")
    world.expect(answer.status == 200, "a release", answer)
    world.expect(answer.body["released"] == account.holds.pop(hold_id), "released", answer)
    world.expect(answer.body["available"] == account.available, "available", answer)
    remember(world, account.account_id, f"/holds/{hold_id}/release", {}, key, answer)
    return [account.account_id]


# -- idempotency ----------------------------------------------------------------------------


async def retry(world: World) -> list[str]:
    """An earlier write again with its key and body: the first answer, nothing charged."""
    if not world.model.remembered:
        return []
    first = world.model.remembered[world.rng.randrange(len(world.model.remembered))]
    path = f"/v1/accounts/{first.account_id}{first.path}"
    answer = await world.gateways.settle(
        world.gateway(), path, scope=first.scope, body=first.body, key=first.key
    )
    world.note(f"retry {first.key} on {first.account_id}{first.path} -> {answer.status}")
    if first.rebuilt and first.capture:
        # The ledger does not keep a capture's hold: its retry is refused, never charged again.
        world.expect(
            answer.code in ("idempotency_conflict", "hold_not_found"),
            f"a retry of capture {first.key} after recovery is refused",
            answer,
        )
        return [first.account_id]
    expected = first.answer
    if first.rebuilt:
        unheld = {"remaining", "available"}  # a rebuilt record counts no holds
        expected = {k: answer.body.get(k) if k in unheld else v for k, v in expected.items()}
    world.expect(
        answer.replayed and Answer(answer.status, expected, True).same_as(answer),
        f"a retry of {first.key} must replay {first.answer}",
        answer,
    )
    return [first.account_id]


async def conflict(world: World) -> list[str]:
    """An earlier key with another body: a conflict, nothing written."""
    # Only these bodies take a description (the others refuse unknown fields before the key).
    candidates = [r for r in world.model.remembered if r.path in ("/consume", "/credits")]
    if not candidates:
        return []
    first = candidates[world.rng.randrange(len(candidates))]
    body = {**first.body, "description": "not the first request"}
    path = f"/v1/accounts/{first.account_id}{first.path}"
    answer = await world.gateways.settle(
        world.gateway(), path, scope=first.scope, body=body, key=first.key
    )
    world.note(f"conflicting reuse of {first.key} -> {answer.status}")
    world.expect(answer.code == "idempotency_conflict", f"reusing {first.key}", answer)
    return [first.account_id]


async def hang_up(world: World) -> list[str]:
    """A charge whose client hangs up as soon as it is sent (settled by its retry)."""
    account = pick_account(world, active=True)
    body = {"resource": "api_call", "units": 1}
    key = world.new_key()
    path = f"/v1/accounts/{account.account_id}/consume"
    gateway = world.gateway()
    await world.gateways.send_and_hang_up(gateway, path, scope="service", body=body, key=key)
    answer = await world.gateways.settle(gateway, path, scope="service", body=body, key=key)
    world.stats["hung_up"] += 1
    world.stats["settled_as_replay"] += answer.replayed
    world.note(f"hung up on a charge to {account.account_id} -> {answer.status}")
    if account.status != "active" or account.available < 1:
        world.expect(answer.status in (402, 403), "a hung-up charge that cannot pass", answer)
        return [account.account_id]
    world.expect(answer.status == 200, "a hung-up charge, settled", answer)
    account.spend(1)
    charged(world, account, answer, 1)
    remember(world, account.account_id, "/consume", body, key, answer)
    return [account.account_id]


# -- jobs -----------------------------------------------------------------------------------


async def renew(world: World) -> list[str]:
    """`quotagate renew` for a new period: every active account renewed once."""
    period = world.model.next_period()
    await asyncio.to_thread(world.cluster.cli, "renew", "--period", period, "--json")
    for account in world.model.accounts.values():
        account.renew(period)
    world.note(f"renewed {period}")
    return list(world.model.accounts)


async def renew_again(world: World) -> list[str]:
    """The last period's renewal run again: nothing changes."""
    period = world.model.last_period
    if period is None or any(a.renewed_period is None for a in world.model.accounts.values()):
        return []
    await asyncio.to_thread(world.cluster.cli, "renew", "--period", period, "--json")
    for account in world.model.accounts.values():
        account.renew(period)  # only accounts opened or reactivated since get it
    world.note(f"renewed {period} again")
    return list(world.model.accounts)


async def schedule_flush(world: World) -> list[str]:
    await world.cluster.enqueue_flushes(world.engine)
    world.note("flushes enqueued")
    return []


OPERATIONS: dict[str, Operation] = {
    "consume": consume, "grant": grant, "refund": refund, "hold": hold, "capture": capture,
    "release": release, "retry": retry, "conflict": conflict, "hang_up": hang_up,
    "burst": burst, "bad_input": bad_input, "open_account": open_account,
    "set_status": set_status, "renew": renew, "renew_again": renew_again,
    "schedule_flush": schedule_flush,
}  # fmt: skip
