"""Script calls on a Redis Cluster: each to the master serving its slot, batched per master.

Every key of a script call carries its partition's hash tag, so a call has one slot and one
master. Each master has a :class:`~quotagate.engine.batching.ScriptRunner` of its own, with
its own connection: the calls of one loop tick become one batch per master, and the batches
go out together (each runner writes to its socket without waiting for the others).

The slot map (slot -> master) is read with CLUSTER SLOTS from any node that answers, at
start and again whenever the cluster says it changed:

- MOVED: the slot has a new master (a resharding finished, or a failover). The script did
  not run. The slot is pointed at the new master at once, the whole map is read again in the
  background, and the call is sent again: it is neither charged nor failed.
- ASK: the slot is moving and this call's keys are no longer on the source. The script did
  not run. The call is sent to the target once, preceded by ASKING, as the protocol requires;
  the map is not changed (the source still owns the slot). The target runs it only if every
  key it names is there: a script that names a key not yet created (a rate-limit state, an
  idempotency record) gets TRYAGAIN, as below, until the slot's move is complete.
- TRYAGAIN: the keys of one script are split between the two nodes of a migration in
  progress. Nothing ran; the call is sent again after a short backoff, while its deadline
  (the client's socket timeout) allows, then fails as BackendUnavailable.
- CLUSTERDOWN, or a master that does not answer: BackendUnavailable within the client
  timeout, as a single Redis that is down; the map is read again, so that calls follow a
  replica that a failover promotes.

The scripts' library is loaded on every master at start (replicas get it by replication); a
master that does not hold it (new to the cluster, or restarted without persistence) gets it
loaded by its runner, which then runs the call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from redis import exceptions as redis_errors
from redis.asyncio import Redis, RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from quotagate.engine.batching import DEFAULT_TIMEOUT_SECONDS, ScriptRunner, _wrap
from quotagate.engine.connection import node_client
from quotagate.engine.loops import RunningLoop
from quotagate.engine.scripts import Script, is_missing, load_library
from quotagate.errors import BackendUnavailable, Redirected

T = TypeVar("T")

MAX_REDIRECTS = 5
"""MOVED replies one call may meet before it fails. One is a map out of date, two a slot
moving while the call was on its way; more means the cluster's view changes faster than a
client can follow, and the call fails as BackendUnavailable. ASK is not counted: the node it
names answers or says TRYAGAIN, whose retries the call's deadline bounds."""

TRYAGAIN_FIRST_WAIT_SECONDS = 0.005
"""The wait before the first retry of a call that met TRYAGAIN; it doubles each time."""

TRYAGAIN_MAX_WAIT_SECONDS = 0.2
"""The longest wait between two retries of a call that meets TRYAGAIN again and again."""

MIN_PARTITIONS_PER_MASTER = 8
"""Fewest partitions per master for load to spread evenly: a partition is one slot, so its
charges all go to one master, and with few partitions each master's share is uneven (with 8
each, one master holding one partition more carries an eighth more)."""

REFRESH_INTERVAL_SECONDS = 0.1
"""Least time between two reads of the slot map: a failover fails many calls at once, and one
read serves them all."""


@dataclass(slots=True)
class _Call:
    script: Script
    keys: Sequence[str]
    args: Sequence[str]
    parse: Callable[[Any], Any]
    combine: str | None
    slot: int
    deadline: float
    """Loop time after which a call that meets TRYAGAIN is not sent again."""
    redirects: int = 0
    retries: int = 0


def _raw(reply: Any) -> Any:
    return reply


class ClusterScriptRunner:
    """Runs scripts on a Redis Cluster, each call on its slot's master, batched per master.
    The same interface as :class:`~quotagate.engine.batching.ScriptRunner`."""

    def __init__(self, cluster: RedisCluster, *, batching: bool = True) -> None:
        self.cluster = cluster
        self.batching = batching
        self._owners: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        self._runners: dict[str, ScriptRunner] = {}
        self._refreshing: asyncio.Future[None] | None = None
        self._refreshed_at = float("-inf")
        self._loop = RunningLoop()
        self._closed = False

    @property
    def timeout(self) -> float:
        """How long a call may take, its retries included: the client's socket timeout."""
        timeout = self.cluster.get_connection_kwargs().get("socket_timeout")
        return float(timeout or DEFAULT_TIMEOUT_SECONDS)

    @property
    def masters(self) -> list[str]:
        """The masters (``host:port``) of the slot map as last read."""
        return sorted({a for a in self._owners if a is not None})

    def master_of(self, slot: int) -> str | None:
        return self._owners[slot]

    def runner_for(self, key: str) -> ScriptRunner:
        """The runner of the master that serves ``key``'s slot (the map must be read)."""
        address = self._owners[key_slot(key.encode())]
        if address is None:
            raise BackendUnavailable(f"no master of the Redis cluster is known for {key!r}")
        return self._runner(address)

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[str]) -> Any:
        return await self.submit(script, keys, args, _raw)

    def submit(
        self,
        script: Script,
        keys: Sequence[str],
        args: Sequence[str],
        parse: Callable[[Any], T],
        *,
        combine: str | None = None,
    ) -> asyncio.Future[T]:
        """``parse`` of the call's reply, as a future (see ScriptRunner.submit)."""
        loop = self._loop.get()
        out: asyncio.Future[T] = loop.create_future()
        slot = key_slot(keys[0].encode())
        call = _Call(script, keys, args, parse, combine, slot, loop.time() + self.timeout)
        self._attempt(out, call)
        return out

    async def load(self, scripts: Sequence[Script]) -> None:
        """Read the slot map, and FUNCTION LOAD the scripts' library on every master."""
        await self.refresh()
        await asyncio.gather(*(self._runner(a).load(scripts) for a in self.masters))

    async def aclose(self) -> None:
        """Fail what waits, close every master's connection, and open none again."""
        self._closed = True
        if self._refreshing is not None:
            self._refreshing.cancel()
        runners, self._runners = self._runners, {}
        for runner in runners.values():
            await runner.aclose()
            await runner.redis.aclose()

    # -- one call ---------------------------------------------------------------------------

    def _attempt(self, out: asyncio.Future[Any], call: _Call) -> None:
        if out.done():
            return  # the caller gave up
        if self._closed:
            out.set_exception(BackendUnavailable("the credit engine is closed"))
            return
        address = self._owners[call.slot]
        if address is None:
            self._after_refresh(out, call)
            return
        sent = self._runner(address).submit(
            call.script, call.keys, call.args, call.parse, combine=call.combine
        )
        out.add_done_callback(partial(_cancel_if_cancelled, sent))
        sent.add_done_callback(partial(self._settled, out, call))

    def _settled(self, out: asyncio.Future[Any], call: _Call, sent: asyncio.Future[Any]) -> None:
        if out.done():
            return
        if sent.cancelled():
            out.cancel()
            return
        error = sent.exception()
        if error is None:
            out.set_result(sent.result())
        elif isinstance(error, Redirected) and (error.ask or call.redirects < MAX_REDIRECTS):
            call.redirects += not error.ask  # an ASK is followed by a reply, or a TRYAGAIN
            self._follow(out, call, error)
        elif _is_tryagain(error) and self._retry_later(out, call):
            pass
        else:
            if isinstance(error, Redirected):
                error = BackendUnavailable(f"the Redis cluster kept redirecting: {error}")
            if isinstance(error, BackendUnavailable):
                self.refresh_soon()  # a master gone: a replica may be taking over
            out.set_exception(error)

    def _follow(self, out: asyncio.Future[Any], call: _Call, redirect: Redirected) -> None:
        if not redirect.ask:
            self._owners[redirect.slot] = redirect.address
            self.refresh_soon()
            self._attempt(out, call)
            return
        asked = asyncio.ensure_future(self._run_asking(redirect.address, call))
        asked.add_done_callback(partial(self._settled, out, call))

    def _retry_later(self, out: asyncio.Future[Any], call: _Call) -> bool:
        """Send the call again after a backoff, if its deadline allows."""
        loop = asyncio.get_running_loop()
        wait = min(TRYAGAIN_FIRST_WAIT_SECONDS * 2**call.retries, TRYAGAIN_MAX_WAIT_SECONDS)
        if loop.time() + wait >= call.deadline:
            return False
        call.retries += 1
        loop.call_later(wait, self._attempt, out, call)
        return True

    async def _run_asking(self, address: str, call: _Call) -> Any:
        """The call on the node importing its slot, after ASKING on the same connection."""
        client = self._runner(address).redis
        try:
            reply = await _asking(client, call)
            if isinstance(reply, redis_errors.ResponseError) and is_missing(reply):
                await load_library(client, call.script.library)
                reply = await _asking(client, call)
        except redis_errors.RedisError as exc:
            raise _wrap(exc, call.script) from exc
        if isinstance(reply, Exception):
            raise _wrap(reply, call.script)
        return call.parse(reply)

    def _after_refresh(self, out: asyncio.Future[Any], call: _Call) -> None:
        """Read the slot map (none yet, or no master for this slot), then send the call."""
        refreshing = self.refresh_soon(force=True)

        def resume(done: asyncio.Future[None]) -> None:
            if out.done():
                return
            error = None if done.cancelled() else done.exception()
            if error is None and self._owners[call.slot] is not None:
                self._attempt(out, call)
            else:
                out.set_exception(
                    error
                    or BackendUnavailable(f"no master of the Redis cluster serves slot {call.slot}")
                )

        refreshing.add_done_callback(resume)

    # -- the slot map -----------------------------------------------------------------------

    def refresh_soon(self, *, force: bool = False) -> asyncio.Future[None]:
        """Read the slot map again in the background: one read at a time, and (unless
        ``force``) not more often than REFRESH_INTERVAL_SECONDS."""
        loop = asyncio.get_running_loop()
        if self._refreshing is not None and not self._refreshing.done():
            return self._refreshing
        if not force and loop.time() - self._refreshed_at < REFRESH_INTERVAL_SECONDS:
            done: asyncio.Future[None] = loop.create_future()
            done.set_result(None)
            return done
        self._refreshing = asyncio.ensure_future(self.refresh())
        self._refreshing.add_done_callback(_consume_error)
        return self._refreshing

    async def refresh(self) -> None:
        """Read the slot map with CLUSTER SLOTS from the first node that answers: the known
        masters, then the seed nodes."""
        self._refreshed_at = asyncio.get_running_loop().time()
        failures = []
        for address in self._candidates():
            try:
                client = self._runner(address).redis
                slots = await client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
            except (redis_errors.RedisError, OSError) as exc:
                failures.append(f"{address}: {exc}")
                continue
            self._owners = _slot_owners(slots, address)
            return
        raise BackendUnavailable("no node of the Redis cluster answers: " + "; ".join(failures))

    def _candidates(self) -> list[str]:
        seeds = [f"{n.host}:{n.port}" for n in self.cluster.nodes_manager.startup_nodes.values()]
        return list(dict.fromkeys([*self.masters, *seeds]))

    def _runner(self, address: str) -> ScriptRunner:
        runner = self._runners.get(address)
        if runner is None:
            client = node_client(self.cluster, address)
            runner = self._runners[address] = ScriptRunner(client, batching=self.batching)
        return runner


def _slot_owners(slots: list[Any], asked: str) -> list[str | None]:
    """CLUSTER SLOTS as slot -> master address. A node that does not know its own address
    names it with an empty host: the address it was asked at."""
    owners: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    asked_host = asked.rpartition(":")[0]
    for start, end, primary, *_ in slots:
        host = str(primary[0]) or asked_host
        owners[int(start) : int(end) + 1] = [f"{host}:{int(primary[1])}"] * (
            int(end) - int(start) + 1
        )
    return owners


async def _asking(client: Redis, call: _Call) -> Any:
    async with client.pipeline(transaction=False) as pipe:
        pipe.execute_command("ASKING")
        pipe.fcall(call.script.function, len(call.keys), *call.keys, *call.args)
        replies = await pipe.execute(raise_on_error=False)
    return replies[1]


def _is_tryagain(error: BaseException) -> bool:
    return isinstance(error, BackendUnavailable) and error.extra.get("redis_state") == "TRYAGAIN"


def _cancel_if_cancelled(sent: asyncio.Future[Any], out: asyncio.Future[Any]) -> None:
    if out.cancelled():
        sent.cancel()


def _consume_error(task: asyncio.Future[None]) -> None:
    with contextlib.suppress(BaseException):
        task.exception()  # read, so a failed background read is not logged as unretrieved
