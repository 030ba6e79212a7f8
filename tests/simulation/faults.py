"""The faults, and what the model expects after each.

- A worker SIGKILLed (often in the middle of a flush: batches are small): nothing changes for
  the model; the dead worker's lease runs out and another redoes the batch.
- Redis restarted (SIGTERM, then started on the same append-only file, fsynced on every
  write): nothing acknowledged is lost; calls during the restart are settled by retrying.
- Redis emptied (FLUSHALL) then ``quotagate recover``, in two forms:
  * after ``quotagate flush``: every acknowledged change is in the ledger, so nothing is lost;
  * without it ("lossy"): the entries still in the outbox and not in the ledger are lost by
    design. Before the FLUSHALL the workers are stopped and the outbox read, so the model
    knows exactly which acknowledged entries go. They must all be spends, renewals or account
    changes: money in that was acknowledged as durable is never among them. The model takes
    their effect back and names them in the run's summary.
  Either way holds are gone (they are not durable), and renewal stamps and idempotency
  records are what recovery makes of them (see ``Options.idempotency_after_recovery``).
- PostgreSQL stopped for a number of steps: charging goes on, grants answer
  ``"durable": false``, flushes fail and resume once it is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
from tests.simulation.model import NOT_DURABLE
from tests.simulation.world import World

from quotagate.errors import AccountNotFound
from quotagate.ledger.outbox import AccountEvent, TransactionEntry, read_batch

Fault = Callable[[World], Awaitable[list[str]]]

POSTGRES_OUTAGE_STEPS = (5, 40)
"""How many steps PostgreSQL stays down, at least and at most."""


async def kill_worker(world: World) -> list[str]:
    index = world.rng.randrange(len(world.cluster.workers))
    await asyncio.to_thread(world.cluster.kill_worker, index)
    world.note(f"SIGKILLed worker {index}")
    return []


async def restart_redis(world: World) -> list[str]:
    await asyncio.to_thread(world.cluster.redis.stop)
    await asyncio.to_thread(world.cluster.redis.start)
    world.note("restarted Redis from its append-only file")
    return list(world.model.accounts)


async def flushall_after_flush(world: World) -> list[str]:
    if world.postgres_down:
        return []  # the flush (and recovery after it) needs PostgreSQL
    await asyncio.to_thread(world.cluster.cli, "flush")
    return await flushall_and_recover(world, lossy=False)


async def flushall_lossy(world: World) -> list[str]:
    return await flushall_and_recover(world, lossy=True)


async def flushall_and_recover(world: World, *, lossy: bool) -> list[str]:
    if world.postgres_down:
        return []  # recovery reads the ledger: it waits for PostgreSQL in real life too
    cluster = world.cluster
    for worker in cluster.workers:
        await asyncio.to_thread(worker.stop)
    lost = await unflushed_entries(world) if lossy else []
    await asyncio.to_thread(cluster.redis.flushall)
    await asyncio.to_thread(cluster.cli, "recover", "--json")
    await asyncio.to_thread(cluster.restart_workers)
    take_back(world, lost)
    for event in (e for e in lost if isinstance(e, AccountEvent)):
        account = world.model.accounts.get(event.account_id)
        if account is None:
            continue  # dropped at an earlier event of this loop
        try:
            restored = await world.engine.get_account(event.account_id)
        except AccountNotFound:
            # Opened while PostgreSQL was down and lost before the flush: by design.
            world.expect(
                not account.opened_durable,
                f"{event.account_id}, acknowledged as durable, is gone after recovery",
            )
            world.model.drop_account(event.account_id)
            world.stats["accounts_lost_by_design"] += 1
            continue
        # A lost status change is undone by recovery: the ledger's status is the one now.
        account.status = restored.status
    world.model.forget_holds()
    if world.options.idempotency_after_recovery:
        # Recovery rebuilds the records of the ledger's consumes, credits and captures; holds
        # and releases are not in the ledger, and neither are their records.
        world.model.remembered = [r for r in world.model.remembered if r.path.endswith(
            ("/consume", "/credits", "/capture"))]  # fmt: skip
        for remembered in world.model.remembered:
            remembered.rebuilt = True
    else:
        world.model.remembered.clear()
        for account in world.model.accounts.values():
            account.renewed_period = None
    world.note(f"FLUSHALL and recover ({len(lost)} entries lost by design)")
    return list(world.model.accounts)


async def unflushed_entries(world: World) -> list[TransactionEntry | AccountEvent]:
    """Outbox entries the ledger does not hold (read while no worker runs)."""
    entries: list[TransactionEntry | AccountEvent] = []
    for partition in range(world.engine.config.partitions):
        entries += [
            e
            for e in await read_batch(world.engine, partition, 100_000)
            if isinstance(e, TransactionEntry | AccountEvent)
        ]
    conn = await asyncpg.connect(world.cluster.database_url)
    try:
        ids = [e.id for e in entries if isinstance(e, TransactionEntry)]
        rows = await conn.fetch("SELECT id FROM credit_transactions WHERE id = ANY($1)", ids)
    finally:
        await conn.close()
    in_ledger = {r["id"] for r in rows}
    return [e for e in entries if isinstance(e, AccountEvent) or e.id not in in_ledger]


def take_back(world: World, lost: list[TransactionEntry | AccountEvent]) -> None:
    """Undo, in the model, what the lost entries did; money in acknowledged as durable may
    not be among them."""
    model = world.model
    for entry in lost:
        account = model.accounts[entry.account_id]
        if isinstance(entry, AccountEvent):
            continue  # the status is compared after recovery, from the ledger's side
        kind = model.acknowledged.get(entry.id)
        world.expect(
            entry.type in ("spend", "expire")
            or (entry.type == "grant" and kind is None)
            or (kind is not None and kind.endswith(NOT_DURABLE)),
            f"a FLUSHALL lost {entry.type} {entry.id} of {entry.amount} on {entry.account_id}:"
            " only spends and renewals may be lost",
        )
        account.monthly -= entry.monthly_delta
        account.purchased -= entry.amount - entry.monthly_delta
        if kind is not None:
            model.lost[entry.id] = kind
            model.spends.pop(entry.id, None)
        if entry.type != "spend":
            account.renewed_period = None  # the renewal itself is gone with its stamp
    lost_keys = {e.idempotency_key for e in lost if isinstance(e, TransactionEntry)}
    model.remembered = [r for r in model.remembered if r.key not in lost_keys]


async def postgres_outage(world: World) -> list[str]:
    if world.postgres_down:
        return []
    assert world.cluster.postgres is not None
    await asyncio.to_thread(world.cluster.postgres.stop, immediate=True)
    world.postgres_down_until = world.step + world.rng.randint(*POSTGRES_OUTAGE_STEPS)
    world.note(f"PostgreSQL down until step {world.postgres_down_until}")
    return []


async def end_postgres_outage(world: World) -> None:
    assert world.cluster.postgres is not None
    await asyncio.to_thread(world.cluster.postgres.start)
    world.postgres_down_until = None
    world.note("PostgreSQL back")


FAULTS: dict[str, Fault] = {
    "kill_worker": kill_worker,
    "restart_redis": restart_redis,
    "flushall_after_flush": flushall_after_flush,
    "flushall_lossy": flushall_lossy,
    "postgres_outage": postgres_outage,
}
