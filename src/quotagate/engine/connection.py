"""Clients for the credit data's Redis: one server (``redis://``, ``rediss://``, ``unix://``)
or a Redis Cluster (``redis+cluster://host:port,host:port``, ``rediss+cluster://`` for TLS).

A cluster URL names seed nodes: any reachable one tells the client the rest (CLUSTER SLOTS).
User, password and query options are written once and apply to every node, as redis-py takes
them for a single server::

    rediss+cluster://:secret@10.0.0.1:6379,10.0.0.2:6379/?ssl_cert_reqs=none

The client for a cluster is redis-py's ``RedisCluster``: the cold paths (start-up, tier sync,
recovery, the jobs' scans and pipelines) use it as they use a single server's client, and it
splits a multi-key pipeline per node itself. The hot path, the script calls, does not go
through it: redis-py's cluster pipeline sends node by node and reads replies one at a time,
where the engine batches each master's calls on a connection of its own
(:mod:`quotagate.engine.routing`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextvars import ContextVar
from types import TracebackType
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode, ClusterPipeline
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException

from quotagate.errors import PoolExhausted

DEFAULT_MAX_CONNECTIONS = 16
"""Connections a job or an operator's command opens to each node of the credit data's Redis
(QUOTAGATE_REDIS_MAX_CONNECTIONS). Jobs run a few partitions at once and send their script
calls over the engine's own connections, so 16 leaves room; a bound keeps a bug or a burst
from opening a socket per call."""

POOL_WAIT_SECONDS = 30.0
"""How long a call waits for a free connection before it fails (and RQ retries the job)."""

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
"""A cluster URL's scheme, and the single-server scheme its options are read as."""


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def seed_nodes(url: str) -> list[tuple[str, int]]:
    """The (host, port) of every seed node a cluster URL names."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    seeds = []
    for part in netloc.split(","):
        host, _, port = part.rpartition(":")
        if not host:
            host, port = part, "6379"
        seeds.append((host.strip("[]"), int(port)))
    return seeds


def single_node_url(url: str) -> str:
    """The cluster URL as a single-server URL of its first seed: the same user, password,
    TLS and options, which redis-py parses for every node."""
    parts = urlsplit(url)
    auth, _, hosts = parts.netloc.rpartition("@")
    first = hosts.split(",")[0]
    netloc = f"{auth}@{first}" if auth else first
    return urlunsplit(parts._replace(scheme=CLUSTER_SCHEMES[parts.scheme], netloc=netloc))


def is_cluster(client: object) -> bool:
    """Whether a client of the credit data (typed ``Redis``) is a cluster's."""
    return isinstance(client, RedisCluster)


def redis_from_url(
    url: str,
    *,
    socket_timeout: float = 5.0,
    connect_timeout: float = 5.0,
    cluster_max_connections: int | None = None,
) -> Redis:
    """A redis-py client as the engine wants one: str replies, bounded waits (a hung server
    surfaces as BackendUnavailable, not a hang), and one quick retry of a command whose pooled
    connection Redis had closed (a restart). No more than one: after a timeout a write may
    have run. The asyncio Retry: the sync one, given to an asyncio client, catches nothing.

    For a cluster URL the client is a ``RedisCluster``, typed as ``Redis``: every command
    quotagate sends through it has the same form on both (only the few places that differ
    ask :func:`is_cluster`). ``cluster_max_connections``: a cluster client that opens at most
    that many connections to each node, the surplus waiting (:class:`BoundedRedisCluster`);
    None: redis-py's own client and bound (100 a node, failing past it)."""
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": socket_timeout,
    }
    if is_cluster_url(url):
        return cast(
            Redis, cluster_from_url(url, max_connections=cluster_max_connections, **options)
        )
    retry = Retry(ExponentialBackoff(cap=0.05, base=0.01), 1, (RedisConnectionError,))
    client: Redis = Redis.from_url(url, retry=retry, **options)
    return client


def cluster_from_url(
    url: str, *, max_connections: int | None = None, **options: Any
) -> RedisCluster:
    """A ``RedisCluster`` on the URL's seed nodes, with its options for every node; with
    ``max_connections``, a :class:`BoundedRedisCluster` of that many connections a node."""
    nodes = [ClusterNode(host, port) for host, port in seed_nodes(url)]
    client = (
        RedisCluster(startup_nodes=nodes, **node_options(url), **options)
        if max_connections is None
        else BoundedRedisCluster(
            startup_nodes=nodes, max_connections=max_connections, **node_options(url), **options
        )
    )
    _route_role_to_every_primary(client)
    return client


class BoundedRedisCluster(RedisCluster):
    """A ``RedisCluster`` that opens at most ``max_connections`` connections to each node,
    and makes the calls past that wait for one (at most ``pool_wait_seconds``).

    redis-py's asyncio cluster client bounds the connections a node (``max_connections``)
    but has no waiting pool: past the bound a command fails at once with an empty
    MaxConnectionsError, and a pipeline that meets it fails with its other connections
    closed, as "Connection lost". So the calls of this client pass a gate of the same size
    first: no more commands and pipelines in flight than connections allowed to one node,
    hence never more than that on any node (a call uses at most one connection a node). A
    call already inside the gate (redis-py's own retries, the commands of a pipeline) does
    not queue again. A pipeline holds its place from ``async with`` to its end: a
    transaction keeps its connection from WATCH to EXEC."""

    def __init__(
        self,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        pool_wait_seconds: float = POOL_WAIT_SECONDS,
        **kwargs: Any,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        super().__init__(max_connections=max_connections, **kwargs)
        self.max_connections = max_connections
        self.pool_wait_seconds = pool_wait_seconds
        self._gate = asyncio.Semaphore(max_connections)
        self._inside: ContextVar[bool] = ContextVar(f"cluster-gate-{id(self)}", default=False)

    @contextlib.asynccontextmanager
    async def in_gate(self) -> AsyncIterator[None]:
        """Hold one of the gate's places for the block (at once if this task holds one)."""
        if self._inside.get():
            yield
            return
        try:
            await asyncio.wait_for(self._gate.acquire(), self.pool_wait_seconds)
        except TimeoutError:
            raise PoolExhausted(
                f"no connection to the Redis cluster came free in {self.pool_wait_seconds:g} s: "
                f"all {self.max_connections} a node (QUOTAGATE_REDIS_MAX_CONNECTIONS) are in use"
            ) from None
        token = self._inside.set(True)
        try:
            yield
        finally:
            self._inside.reset(token)
            self._gate.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.in_gate():
            return await super().execute_command(*args, **kwargs)

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return _BoundedPipeline(self, transaction)  # type: ignore[abstract]


class _BoundedPipeline(ClusterPipeline):
    """A pipeline of a :class:`BoundedRedisCluster`: in its gate from ``async with`` to the
    end of the block, or for ``execute`` alone when used without ``async with``."""

    __slots__ = ("_held",)

    def __init__(self, client: BoundedRedisCluster, transaction: Any | None = None) -> None:
        super().__init__(client, transaction)
        self._held: contextlib.AbstractAsyncContextManager[None] | None = None

    async def __aenter__(self) -> ClusterPipeline:
        client = cast(BoundedRedisCluster, self.cluster_client)
        held = client.in_gate()
        await held.__aenter__()
        self._held = held
        try:
            return await super().__aenter__()
        except BaseException:
            self._held = None
            await held.__aexit__(None, None, None)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        held, self._held = self._held, None
        try:
            await super().__aexit__(exc_type, exc_value, traceback)  # type: ignore[arg-type]
        finally:
            if held is not None:
                await held.__aexit__(exc_type, exc_value, traceback)

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        async with cast(BoundedRedisCluster, self.cluster_client).in_gate():
            return await super().execute(raise_on_error, allow_redirections)


def _route_role_to_every_primary(client: RedisCluster) -> None:
    """ROLE names no key, so redis-py's cluster client would not know where to send it. The
    readiness probe asks it to learn whether charges can be written: on a cluster, every
    master must say "master" (one a failover demoted says "slave" until the map is fresh)."""
    client.command_flags["ROLE"] = RedisCluster.PRIMARIES
    client.result_callbacks["ROLE"] = _least_writable_role


def _least_writable_role(command: Any, replies: dict[str, Any]) -> Any:
    roles = list(replies.values())
    return next((r for r in roles if not r or str(r[0]) != "master"), roles[0] if roles else [])


def sync_redis_from_url(
    url: str, *, timeout_seconds: float = 5.0
) -> redis.Redis | redis.RedisCluster:
    """A synchronous client (bytes replies) for the CLI's and the worker's start-up checks."""
    options: dict[str, Any] = {
        "socket_timeout": timeout_seconds,
        "socket_connect_timeout": timeout_seconds,
    }
    if not is_cluster_url(url):
        return redis.Redis.from_url(url, **options)
    nodes = [redis.cluster.ClusterNode(host, port) for host, port in seed_nodes(url)]  # type: ignore[no-untyped-call]
    return redis.RedisCluster(startup_nodes=nodes, **node_options(url), **options)


def node_options(url: str) -> dict[str, Any]:
    """What a cluster URL says for every node (user, password, TLS, query options) as
    redis-py's cluster clients take it: ``ssl=True`` rather than a connection class, and no
    database (a cluster has database 0 only)."""
    kwargs = dict(redis.connection.parse_url(single_node_url(url)))  # type: ignore[no-untyped-call]
    for name in ("host", "port", "db"):
        kwargs.pop(name, None)
    if kwargs.pop("connection_class", None) is redis.connection.SSLConnection:
        kwargs["ssl"] = True
    return kwargs


_NODE_OPTIONS = frozenset({
    "username", "password", "credential_provider", "client_name", "encoding",
    "encoding_errors", "decode_responses", "socket_timeout", "socket_connect_timeout",
    "socket_keepalive",
})  # fmt: skip
"""The options of a cluster client that a client for one of its nodes takes too (with every
``ssl_*`` option): the rest are the cluster client's own machinery."""


def node_client(cluster: RedisCluster, address: str) -> Redis:
    """A single-server client for one node (``host:port``) of ``cluster``, with the same
    credentials, TLS and timeouts: the hot path's batches go over its connections."""
    kwargs = cluster.get_connection_kwargs()
    options = {k: v for k, v in kwargs.items() if k in _NODE_OPTIONS or k.startswith("ssl_")}
    host, _, port = address.rpartition(":")
    connection_class = kwargs.get("connection_class") or Connection
    pool = ConnectionPool(connection_class=connection_class, host=host, port=int(port), **options)
    return Redis.from_pool(pool)  # closing the client closes its pool
