"""Script calls on a real Redis Cluster: one batch per master, MOVED, ASK, TRYAGAIN, a master
without the scripts' library and a master that is gone, each made to happen for real (slots moved as redis-cli moves them,
a master stopped)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.crc import key_slot
from tests.engine.configs import PLAIN
from tests.support.cluster import (
    RedisCluster,
    SlotMove,
    node_client,
    redis_cli_binary,
    redis_cluster,
    slot_owner,
)

from quotagate.config import parse_config
from quotagate.engine import CreditEngine
from quotagate.engine.connection import redis_from_url, sync_redis_from_url
from quotagate.engine.routing import ClusterScriptRunner
from quotagate.errors import BackendUnavailable

pytestmark = pytest.mark.skipif(redis_cli_binary() is None, reason="needs redis-cli")

MakeEngine = Callable[..., Awaitable[CreditEngine]]


@pytest.fixture
async def cluster_engine(test_cluster: RedisCluster) -> AsyncIterator[MakeEngine]:
    """Initialised engines on the test run's cluster, on a prefix of this test's own."""
    prefix = f"test{uuid.uuid4().hex[:12]}"
    made: list[CreditEngine] = []

    async def factory(socket_timeout: float = 5.0) -> CreditEngine:
        client = redis_from_url(test_cluster.url, socket_timeout=socket_timeout)
        engine = CreditEngine(client, parse_config(PLAIN), prefix=prefix)
        made.append(engine)
        await engine.initialize()
        return engine

    yield factory
    for engine in made:
        await engine.aclose()
    client = sync_redis_from_url(test_cluster.url)
    for key in list(client.scan_iter(match=f"{prefix}:*", count=1000)):
        client.delete(key)
    client.close()


def _router(engine: CreditEngine) -> ClusterScriptRunner:
    assert isinstance(engine.runner, ClusterScriptRunner)
    return engine.runner


def _slot(engine: CreditEngine, account_id: str) -> int:
    return key_slot(engine.keys.account(account_id).account.encode())


def _other_master(cluster: RedisCluster, port: int) -> int:
    return next(p for p in cluster.master_ports() if p != port)


async def _funded(engine: CreditEngine, account_id: str, amount: int = 100) -> None:
    await engine.upsert_account(account_id)
    await engine.credit(account_id, amount)


async def test_calls_of_one_tick_go_as_one_batch_per_master(cluster_engine: MakeEngine) -> None:
    engine = await cluster_engine()
    accounts = [f"acct-{i}" for i in range(60)]
    for account in accounts:
        await _funded(engine, account)
    router = _router(engine)
    assert len(router.masters) == 3
    batches: dict[str, list[int]] = {address: [] for address in router.masters}
    for address in router.masters:
        runner = router._runner(address)
        send = runner._send

        def counted(pipe: Any, batch: list[Any], send: Any = send, address: str = address) -> None:
            batches[address].append(len(batch))
            send(pipe, batch)

        runner._send = counted  # type: ignore[method-assign]  # counts, then sends as before

    results = await asyncio.gather(*(engine.consume(a, "unit") for a in accounts))
    assert [r.remaining for r in results] == [99] * 60
    assert all(len(sizes) == 1 for sizes in batches.values()), batches  # one batch each
    assert sum(sizes[0] for sizes in batches.values()) == 60
    assert all(sizes[0] > 0 for sizes in batches.values())  # the accounts span every master


async def test_moved_slot_is_followed_and_charged_once(
    cluster_engine: MakeEngine, test_cluster: RedisCluster
) -> None:
    engine = await cluster_engine()
    await _funded(engine, "mover")
    slot = _slot(engine, "mover")
    source = slot_owner(test_cluster, slot)
    target = _other_master(test_cluster, source)
    SlotMove(slot, source, target).run(test_cluster.master_ports())

    result = await engine.consume("mover", "unit", 3)  # sent to the old master: MOVED
    assert result.remaining == 97
    assert _router(engine).master_of(slot) == f"127.0.0.1:{target}"
    assert (await engine.get_account("mover")).balance == 97


async def test_a_charge_during_a_migration_runs_once_on_the_slot_it_ends_on(
    cluster_engine: MakeEngine, test_cluster: RedisCluster
) -> None:
    """Every key moved, the move not yet final: the source answers ASK, the target (asked)
    says TRYAGAIN while a key the script names does not exist; the charge waits, and runs
    once when the slot is the target's."""
    engine = await cluster_engine()
    await _funded(engine, "asked")
    slot = _slot(engine, "asked")
    source = slot_owner(test_cluster, slot)
    target = _other_master(test_cluster, source)
    move = SlotMove(slot, source, target)
    move.begin()
    move.migrate()  # every key is on the target; the source still owns the slot
    charge = asyncio.ensure_future(engine.consume("asked", "unit", 2))
    await asyncio.sleep(0.3)
    assert not charge.done()
    assert _router(engine).master_of(slot) == f"127.0.0.1:{source}"  # ASK moves no slot
    await asyncio.to_thread(move.finish, test_cluster.master_ports())
    assert (await charge).remaining == 98
    assert (await engine.get_account("asked")).balance == 98


async def test_tryagain_is_retried_until_the_migration_moves_the_rest(
    cluster_engine: MakeEngine, test_cluster: RedisCluster
) -> None:
    engine = await cluster_engine()
    await _funded(engine, "split")
    slot = _slot(engine, "split")
    source = slot_owner(test_cluster, slot)
    move = SlotMove(slot, source, _other_master(test_cluster, source))
    move.begin()
    move.migrate([engine.keys.account("split").account.encode()])  # the rest stays behind
    charge = asyncio.ensure_future(engine.consume("split", "unit"))
    await asyncio.sleep(0.3)
    assert not charge.done()  # TRYAGAIN, again and again
    await asyncio.to_thread(move.migrate)
    await asyncio.to_thread(move.finish, test_cluster.master_ports())
    assert (await charge).remaining == 99
    assert (await engine.get_account("split")).balance == 99


async def test_tryagain_past_the_deadline_is_unavailable_within_the_timeout(
    cluster_engine: MakeEngine, test_cluster: RedisCluster
) -> None:
    engine = await cluster_engine(socket_timeout=1.0)
    await _funded(engine, "stuck")
    slot = _slot(engine, "stuck")
    source = slot_owner(test_cluster, slot)
    move = SlotMove(slot, source, _other_master(test_cluster, source))
    move.begin()
    move.migrate([engine.keys.account("stuck").account.encode()])
    try:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable) as raised:
            await engine.consume("stuck", "unit")
        assert time.monotonic() - started < 1.5
        assert raised.value.extra["redis_state"] == "TRYAGAIN"
    finally:
        move.migrate()
        move.finish(test_cluster.master_ports())
    assert (await engine.get_account("stuck")).balance == 100  # nothing was charged


async def test_a_master_that_lost_its_scripts_gets_them_again(
    cluster_engine: MakeEngine, test_cluster: RedisCluster
) -> None:
    engine = await cluster_engine()
    await _funded(engine, "flushed")
    client = node_client(slot_owner(test_cluster, _slot(engine, "flushed")))
    client.function_flush()
    client.close()
    assert (await engine.consume("flushed", "unit")).remaining == 99


async def test_a_stopped_master_is_unavailable_and_a_down_cluster_too() -> None:
    """A cluster of its own (no replicas), one master stopped: its slots fail at once, then
    the whole cluster says CLUSTERDOWN; every failure within the client timeout."""
    with redis_cluster(masters=3, replicas=0) as cluster:
        engine = CreditEngine(
            redis_from_url(cluster.url, socket_timeout=1.0, connect_timeout=1.0),
            parse_config(PLAIN),
            prefix="down",
        )
        try:
            await engine.initialize()
            accounts = [f"acct-{i}" for i in range(30)]
            for account in accounts:
                await _funded(engine, account)
            stopped = cluster.nodes[0]
            on_stopped = [
                a for a in accounts if slot_owner(cluster, _slot(engine, a)) == stopped.port
            ]
            others = [a for a in accounts if a not in on_stopped]
            stopped.stop()
            started = time.monotonic()
            with pytest.raises(BackendUnavailable):
                await engine.consume(on_stopped[0], "unit")
            assert time.monotonic() - started < 1.5
            assert (await engine.consume(others[0], "unit")).remaining == 99  # the others serve

            deadline = time.monotonic() + 30
            while True:  # the cluster marks the master failed (node timeout 2 s)
                try:
                    await engine.consume(others[1], "unit")
                except BackendUnavailable as exc:
                    assert exc.extra.get("redis_state") == "CLUSTERDOWN"
                    break
                assert time.monotonic() < deadline, "the cluster never said CLUSTERDOWN"
                await asyncio.sleep(0.2)
        finally:
            await engine.aclose()
