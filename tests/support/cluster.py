"""A real Redis Cluster on free loopback ports, for tests: N masters, each with R replicas.

Started with the system's redis-server (``--cluster-enabled yes``) and ``redis-cli --cluster
create``, as an operator would; every node lives in a temporary directory of its own and is
stopped and removed afterwards. Nothing here is a fake: MOVED, ASK, failovers and resharding
are the real server's.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
from tests.support.servers import RedisProcess

START_SECONDS = 60
"""How long a cluster may take to agree on its slots (the machine may be busy)."""


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too, and below 65536:
    the kernel's ephemeral ports (above 32768) would often put the bus out of range."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 30000)
        if all(_bindable(p) for p in (port, port + 10000)):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def redis_cli_binary() -> str | None:
    return shutil.which("redis-cli") or shutil.which("valkey-cli")


CLUSTER_NODE_ARGS = (
    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
    "--cluster-node-timeout", "2000",
)  # fmt: skip
"""A node of a test cluster; 2 s to declare a master failed keeps failover tests short."""


class ClusterNode(RedisProcess):
    """One cluster-enabled redis-server on a port whose bus port is free too."""

    def __init__(self) -> None:
        super().__init__(port=cluster_port(), extra_args=CLUSTER_NODE_ARGS)


@dataclass
class RedisCluster:
    masters: int = 3
    replicas: int = 1
    nodes: list[ClusterNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Seed nodes in the form quotagate reads: ``redis+cluster://host:port,host:port``."""
        return "redis+cluster://" + ",".join(n.address for n in self.nodes[: self.masters])

    @property
    def seed(self) -> ClusterNode:
        return self.nodes[0]

    def start(self) -> None:
        cli = redis_cli_binary()
        if cli is None:
            raise RuntimeError("redis-cli is needed to create a cluster")
        for _ in range(self.masters * (1 + self.replicas)):
            node = ClusterNode()
            self.nodes.append(node)
            node.start()
        subprocess.run(
            [cli, "--cluster", "create", *(n.address for n in self.nodes),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=START_SECONDS,
        )  # fmt: skip
        _wait(self.healthy, "the cluster did not reach cluster_state:ok")

    def healthy(self) -> bool:
        """Every node says the cluster is ok and sees every node in its role."""
        for node in self.nodes:
            if node.proc is None:
                continue
            client = node.client()
            try:
                info = client.cluster("info")
            finally:
                client.close()
            seen = _topology(node)
            masters = sum(1 for _, role, _ in seen if role == "master")
            if info.get("cluster_state") != "ok" or len(seen) < len(self.nodes):
                return False
            if masters != self.masters:
                return False
        return True

    def topology(self) -> list[tuple[int, str, str]]:
        """(port, role, node id) of every node not failed, as CLUSTER NODES says now (a
        failover changes roles)."""
        for node in self.nodes:
            if node.proc is not None:
                with contextlib.suppress(redis.RedisError, OSError):
                    return _topology(node)
        raise RuntimeError("no node of the cluster answers")

    def master_ports(self) -> list[int]:
        """Ports of the nodes that are masters now."""
        return [port for port, role, _ in self.topology() if role == "master"]

    def flush_all(self) -> None:
        """Empty every master (replicas follow)."""
        for port in self.master_ports():
            client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
            try:
                client.flushall()
            finally:
                client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.cleanup()
        self.nodes.clear()


def _topology(node: ClusterNode) -> list[tuple[int, str, str]]:
    """CLUSTER NODES as one node sees it, read raw: redis-py's parsed form does not keep a
    replica's role."""
    client = node.client()
    try:
        connection = client.connection_pool.get_connection()
        try:
            # redis-py leaves send_command unannotated.
            connection.send_command("CLUSTER", "NODES")  # type: ignore[no-untyped-call]
            text = connection.read_response()
        finally:
            client.connection_pool.release(connection)
    finally:
        client.close()
    out = []
    for line in (text.decode() if isinstance(text, bytes) else str(text)).splitlines():
        node_id, address, flags = line.split()[:3]
        port = int(address.split("@")[0].rsplit(":", 1)[1])
        role = "master" if "master" in flags.split(",") else "replica"
        if "fail" not in flags:
            out.append((port, role, node_id))
    return sorted(out)


def _wait(ready: Callable[[], bool], message: str) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            if ready():
                return
        time.sleep(0.1)
    raise RuntimeError(message)


@contextlib.contextmanager
def redis_cluster(masters: int = 3, replicas: int = 1) -> Iterator[RedisCluster]:
    cluster = RedisCluster(masters, replicas)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def node_client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=10)


def node_id(port: int) -> str:
    client = node_client(port)
    try:
        return str(client.execute_command("CLUSTER", "MYID").decode())  # type: ignore[no-untyped-call]  # redis-py leaves execute_command unannotated
    finally:
        client.close()


def slot_owner(cluster: RedisCluster, slot: int) -> int:
    """The port of the master that serves ``slot`` now."""
    client = node_client(cluster.master_ports()[0])
    try:
        slots = client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]  # redis-py leaves execute_command unannotated
        for start, end, primary, *_ in slots:
            if int(start) <= slot <= int(end):
                return int(primary[1])
    finally:
        client.close()
    raise RuntimeError(f"no master serves slot {slot}")


@dataclass
class SlotMove:
    """One slot moving from one master to another, step by step, as ``redis-cli --cluster
    reshard`` moves it: IMPORTING on the target, MIGRATING on the source, MIGRATE of its keys,
    then the slot given to the target on every master."""

    slot: int
    source: int
    target: int

    def begin(self) -> None:
        source_id = node_id(self.source)
        target_id = node_id(self.target)
        _node_command(self.target, "CLUSTER", "SETSLOT", self.slot, "IMPORTING", source_id)
        _node_command(self.source, "CLUSTER", "SETSLOT", self.slot, "MIGRATING", target_id)

    def migrate(self, keys: list[bytes] | None = None, batch: int = 100) -> int:
        """MIGRATE ``keys`` (default: every key left in the slot) to the target."""
        moved = 0
        while True:
            chunk = keys if keys is not None else _node_command(
                self.source, "CLUSTER", "GETKEYSINSLOT", self.slot, batch
            )  # fmt: skip
            if not chunk:
                return moved
            _node_command(
                self.source, "MIGRATE", "127.0.0.1", self.target, "", 0, 10_000, "KEYS", *chunk
            )
            moved += len(chunk)
            if keys is not None:
                return moved

    def finish(self, masters: list[int]) -> None:
        target_id = node_id(self.target)
        for port in [self.target, self.source, *masters]:
            _node_command(port, "CLUSTER", "SETSLOT", self.slot, "NODE", target_id)

    def run(self, masters: list[int]) -> None:
        self.begin()
        self.migrate()
        self.finish(masters)


def _node_command(port: int, *args: object) -> Any:
    client = node_client(port)
    try:
        return client.execute_command(*args)  # type: ignore[no-untyped-call]  # redis-py leaves execute_command unannotated
    finally:
        client.close()
