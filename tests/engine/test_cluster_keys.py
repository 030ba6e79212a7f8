"""Every script's keys share one hash slot, and the engine runs on a real Redis Cluster node."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis
from redis.crc import key_slot
from tests.conftest import EngineFactory
from tests.engine.configs import PLAIN
from tests.support.servers import RedisProcess, free_port, redis_server_binary

from quotagate.engine import CreditEngine, KeySpace

ACCOUNTS = ["alice", "bob@example.com", "org:42:key-7", "a" * 128, "x.y_z-1", "{brace", "}"]


@pytest.mark.parametrize("account", ACCOUNTS)
def test_all_keys_of_an_account_share_one_slot(account: str) -> None:
    keys = KeySpace("qg", 64)
    for idem in (None, "req-1", "{other}"):
        slots = {key_slot(k.encode()) for k in keys.account(account, idem).as_list()}
        assert len(slots) == 1
    p = keys.partition_of(account)
    partition_keys = [keys.cfg(p), keys.outbox(p), keys.partition_hold_expiry(p)]
    assert {key_slot(k.encode()) for k in partition_keys} == slots


def test_partitions_spread_over_distinct_slots() -> None:
    keys = KeySpace("qg", 64)
    assert len({key_slot(keys.cfg(p).encode()) for p in range(64)}) == 64


class ClusterNode(RedisProcess):
    """A one-node Redis Cluster owning every slot: it refuses any cross-slot script or MULTI."""

    def start(self) -> None:
        args = [
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--dir", self.dir, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            # the bus port defaults to port + 10000, past 65535 for half the ephemeral range
            "--cluster-port", str(free_port()),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
        deadline = time.monotonic() + 30  # generous: the machine may be busy
        slots_added = False
        while True:
            assert time.monotonic() < deadline, "the cluster node did not come up"
            try:
                if not slots_added:
                    # redis-py leaves execute_command unannotated.
                    client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)  # type: ignore[no-untyped-call]
                    slots_added = True
                info = client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
                if b"cluster_state:ok" in info:
                    break
            except (redis.ConnectionError, redis.TimeoutError):
                pass
            time.sleep(0.05)
        client.close()


@pytest.fixture
def cluster_node() -> Iterator[ClusterNode]:
    node = ClusterNode()
    try:
        node.start()
        yield node
    finally:
        node.cleanup()


async def test_every_operation_runs_on_a_cluster_node(
    make_engine: EngineFactory, cluster_node: ClusterNode
) -> None:
    engine: CreditEngine = await make_engine(PLAIN, url=cluster_node.url)
    assert await engine.is_ready()
    for account in ACCOUNTS[:4]:
        await engine.upsert_account(account, tier="pro", idempotency_key="open")
        await engine.credit(account, 100, idempotency_key="g1")
        await engine.check(account, "unit")
        await engine.consume(account, "unit", 2, idempotency_key="c1")
        hold = await engine.hold(account, amount=10, ttl_seconds=1, idempotency_key="h1")
        await engine.capture(account, hold.hold_id, 4, idempotency_key="cap")
        other = await engine.hold(account, amount=5)
        await engine.release(account, other.hold_id, idempotency_key="rel")
        await engine.hold(account, amount=1, ttl_seconds=1)
        await engine.renew(account, "2099-01")
        state = await engine.get_account(account)
        # 100 granted, 2 consumed, 4 captured, then the pro tier's reset grant of 1000
        assert (state.balance, state.reserved) == (100 - 2 - 4 + 1000, 1)
    await asyncio.sleep(1.05)
    swept = [await engine.expire_due_holds(p) for p in range(engine.config.partitions)]
    assert sum(h for h, _, _ in swept) == 4
    results = await asyncio.gather(*(engine.consume(a, "unit") for a in ACCOUNTS[:4] * 25))
    assert len(results) == 100
