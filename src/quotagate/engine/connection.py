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

from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

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


def redis_from_url(url: str, *, socket_timeout: float = 5.0, connect_timeout: float = 5.0) -> Redis:
    """A redis-py client as the engine wants one: str replies, bounded waits (a hung server
    surfaces as BackendUnavailable, not a hang), and one quick retry of a command whose pooled
    connection Redis had closed (a restart). No more than one: after a timeout a write may
    have run. The asyncio Retry: the sync one, given to an asyncio client, catches nothing.

    For a cluster URL the client is a ``RedisCluster``, typed as ``Redis``: every command
    quotagate sends through it has the same form on both (only the few places that differ
    ask :func:`is_cluster`)."""
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": socket_timeout,
    }
    if is_cluster_url(url):
        return cast(Redis, cluster_from_url(url, **options))
    retry = Retry(ExponentialBackoff(cap=0.05, base=0.01), 1, (RedisConnectionError,))
    client: Redis = Redis.from_url(url, retry=retry, **options)
    return client


def cluster_from_url(url: str, **options: Any) -> RedisCluster:
    """A ``RedisCluster`` on the URL's seed nodes, with its options for every node."""
    nodes = [ClusterNode(host, port) for host, port in seed_nodes(url)]
    client = RedisCluster(startup_nodes=nodes, **node_options(url), **options)
    _route_role_to_every_primary(client)
    return client


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
