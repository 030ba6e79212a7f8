"""An embedded Redis Cluster for `quotagate up --cluster N`: N masters of the embedded Valkey
on loopback ports, and a standalone Valkey for the queues (RQ does not run on a cluster).

On first start the slots are split evenly over the masters (CLUSTER ADDSLOTSRANGE) and the
nodes meet (CLUSTER MEET), as ``redis-cli --cluster create`` does; each node keeps the
cluster's layout in its ``nodes.conf`` and its ports in its directory, so later starts find
the same cluster with its data. No replicas: it is for trying quotagate on a cluster, on one
machine.
"""

from __future__ import annotations

import contextlib
import time

import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS

from quotagate.embedded.datadir import DataDir
from quotagate.embedded.process import Child
from quotagate.embedded.valkey import EmbeddedValkey
from quotagate.errors import BackendUnavailable, ConfigError

MIN_MASTERS = 3
"""Redis Cluster's own minimum for a cluster that can vote out a failed master."""

FORM_TIMEOUT_SECONDS = 60.0
"""How long the nodes may take to agree that every slot is served."""


class EmbeddedCluster:
    """Start and stop the data directory's cluster and its queue server."""

    def __init__(self, data_dir: DataDir, masters: int) -> None:
        if masters < MIN_MASTERS:
            raise ConfigError(f"--cluster takes at least {MIN_MASTERS} masters, not {masters}")
        self.nodes = [
            EmbeddedValkey(data_dir, name=f"node-{i}", cluster=True) for i in range(masters)
        ]
        self.queue = EmbeddedValkey(data_dir, name="queue")
        self.password = self.queue.password

    @property
    def url(self) -> str:
        seeds = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"redis+cluster://:{self.password}@{seeds}"

    @property
    def queue_url(self) -> str:
        return self.queue.url

    def start(self) -> list[Child]:
        """Every node and the queue server, and the cluster formed; the children started."""
        children = [node.start() for node in self.nodes]
        children.append(self.queue.start())
        clients = [
            redis.Redis(port=node.port, password=self.password, socket_timeout=5)
            for node in self.nodes
        ]
        try:
            if int(clients[0].cluster("info").get("cluster_slots_assigned", 0)) == 0:
                self._form(clients)
            self._wait_ok(clients)
        finally:
            for client in clients:
                client.close()
        return children

    def _form(self, clients: list[redis.Redis]) -> None:
        share = REDIS_CLUSTER_HASH_SLOTS // len(clients)
        for i, client in enumerate(clients):
            first = i * share
            last = REDIS_CLUSTER_HASH_SLOTS - 1 if i == len(clients) - 1 else first + share - 1
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)  # type: ignore[no-untyped-call]
        for node in self.nodes[1:]:
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)  # type: ignore[no-untyped-call]

    def _wait_ok(self, clients: list[redis.Redis]) -> None:
        deadline = time.monotonic() + FORM_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                infos = [client.cluster("info") for client in clients]
                if all(i.get("cluster_state") == "ok" for i in infos):
                    return
            time.sleep(0.1)
        raise BackendUnavailable(
            f"the embedded cluster did not reach cluster_state:ok in {FORM_TIMEOUT_SECONDS:g} s"
        )
