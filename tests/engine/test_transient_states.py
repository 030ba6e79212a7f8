"""A Redis that cannot serve for now is "unavailable", never an internal error.

Each state is made for real on a private redis-server: LOADING (restarted with a data set it
loads slowly), BUSY (a script that does not end), READONLY (a primary demoted by a failover),
MASTERDOWN (a replica that lost its master and serves no stale data), CLUSTERDOWN (a cluster
node whose slots were taken away). In each, the engine raises BackendUnavailable, the service
API answers 503 ``backend_unavailable``, the hook answers by its failure mode (503 closed,
200 degraded open), readiness says Redis is down; nothing is charged, and once the state
passes, charging goes on from the right balance.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from tests.api.helpers import assert_problem, bearer
from tests.support.gateway import (  # noqa: F401 - fixtures
    GatewayServer,
    api_keys,
    gateway_settings,
    migrated_database_url,
    running_gateway,
)
from tests.support.servers import free_port, redis_server_binary

from quotagate.config import parse_config
from quotagate.engine import CreditEngine
from quotagate.errors import BackendUnavailable

CONFIG = """
partitions = 2
opening_grant = false
[resources]
api_call = 1
[tiers.free]
credit_limit = 1000
monthly_grant = 100
[authz]
timeout_ms = 3000
failure_mode = "{mode}"
"""
ACCOUNT = "transient-alice"
GRANT = 100
CALLS = 5
"""Charges tried in each state, by each path: every one must fail as unavailable."""


@dataclass
class Server:
    """A redis-server of the test's own, restartable on the same port with the same files."""

    args: list[str]
    port: int = field(default_factory=free_port)
    dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="qg-transient-"))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        # No retries: redis-py retries LOADING and refused connections by default, with
        # backoff, which would hide the very states looked for.
        return redis.Redis(
            port=self.port, socket_timeout=10, decode_responses=True, retry=Retry(NoBackoff(), 0)
        )

    def start(self, *extra: str) -> None:
        command = [
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", self.dir, *self.args, *extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with self.client() as c:
                    c.ping()
                return
            except redis.BusyLoadingError:
                return  # up, loading its data
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def answers_with(server: Server, word: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with server.client() as c:
                c.hget("probe", "x")
        except redis.RedisError as exc:
            code = getattr(exc, "status_code", None) or str(exc).split(" ", 1)[0]
            return code == word
        return False

    return check


# -- the states: each enters on a healthy server, yields, and leaves --------------------------

State = Callable[[Server], contextlib.AbstractContextManager[None]]


@contextlib.contextmanager
def loading(server: Server) -> Iterator[None]:
    """Restarted with its data in an RDB file that it loads at 200 us a key: a few seconds."""
    with server.client() as c:
        with c.pipeline(transaction=False) as pipe:
            for i in range(20_000):
                pipe.set(f"filler:{i}", "x")
            pipe.execute()
        c.save()
    server.stop()
    server.start("--key-load-delay", "200", "--loading-process-events-interval-bytes", "1024")
    wait_until(answers_with(server, "LOADING"), "LOADING")
    yield
    wait_until(lambda: not answers_with(server, "LOADING")(), "the end of loading", 60)


@contextlib.contextmanager
def busy(server: Server) -> Iterator[None]:
    """A script that does not end, past busy-reply-threshold: everyone else gets BUSY."""
    with server.client() as c:
        c.config_set("busy-reply-threshold", "100")
    looping = redis.Redis(port=server.port, socket_timeout=None)
    thread = threading.Thread(target=_run_forever, args=(looping,), daemon=True)
    thread.start()
    wait_until(answers_with(server, "BUSY"), "BUSY")
    yield
    with server.client() as c:
        c.script_kill()
    thread.join(10)
    looping.close()


def _run_forever(client: redis.Redis) -> None:
    with contextlib.suppress(redis.RedisError):
        client.eval("while true do end", 0)


@contextlib.contextmanager
def _demoted(server: Server) -> Iterator[Server]:
    """A failover: a new server syncs from ours, is promoted, and ours becomes its replica
    (same data, read-only)."""
    other = Server([])
    other.start()
    try:
        with other.client() as c:
            c.replicaof("127.0.0.1", server.port)
            wait_until(lambda: c.info("replication")["master_link_status"] == "up", "the sync")
            c.replicaof("NO", "ONE")
        with server.client() as c:
            c.replicaof("127.0.0.1", other.port)
            wait_until(lambda: c.info("replication")["master_link_status"] == "up", "the sync")
        yield other
    finally:
        with contextlib.suppress(redis.RedisError), server.client() as c:
            c.replicaof("NO", "ONE")
        other.cleanup()


@contextlib.contextmanager
def readonly(server: Server) -> Iterator[None]:
    with _demoted(server):
        yield


@contextlib.contextmanager
def masterdown(server: Server) -> Iterator[None]:
    with _demoted(server) as primary:
        with server.client() as c:
            c.config_set("replica-serve-stale-data", "no")
        primary.stop()
        wait_until(answers_with(server, "MASTERDOWN"), "MASTERDOWN")
        yield
        with server.client() as c:
            c.config_set("replica-serve-stale-data", "yes")


@contextlib.contextmanager
def clusterdown(server: Server) -> Iterator[None]:
    """A cluster node that served every slot loses them all."""
    with server.client() as c:
        c.execute_command("CLUSTER", "DELSLOTSRANGE", "0", "16383")
    wait_until(answers_with(server, "CLUSTERDOWN"), "CLUSTERDOWN")
    yield
    with server.client() as c:
        c.execute_command("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
    wait_until(lambda: not answers_with(server, "CLUSTERDOWN")(), "the cluster back")


STATES: dict[str, tuple[State, list[str]]] = {
    "LOADING": (loading, []),
    "BUSY": (busy, []),
    "READONLY": (readonly, []),
    "MASTERDOWN": (masterdown, []),
    "CLUSTERDOWN": (clusterdown, ["--cluster-enabled", "yes"]),
}


@pytest.fixture(params=list(STATES))
def state(request: pytest.FixtureRequest) -> Iterator[tuple[str, State, Server]]:
    name = request.param
    enter, args = STATES[name]
    # A cluster node's bus port defaults to its port + 10000: past 65535 for half the ports
    # free_port() hands out, so it gets a free port of its own.
    cluster_args = ["--cluster-config-file", "nodes.conf", "--cluster-port", str(free_port())]
    server = Server([*args, *cluster_args] if args else [])
    server.start()
    if args:
        with server.client() as c:
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
            wait_until(lambda: c.cluster("info")["cluster_state"] == "ok", "the cluster")
    try:
        yield name, enter, server
    finally:
        server.cleanup()


# -- what callers see ---------------------------------------------------------------------------


async def _engine_failures(engine: CreditEngine, unbatched: CreditEngine, word: str) -> None:
    for charge in (engine, unbatched):
        if word == "LOADING":
            # The restart broke the connection the engine had: its first call finds that out.
            with pytest.raises(BackendUnavailable):
                await charge.consume(ACCOUNT, "api_call")
        # A replica refuses a function that may write as READONLY before it looks at its
        # master: a charge on a replica that lost it says so; the reads below say MASTERDOWN.
        expected = "READONLY" if word == "MASTERDOWN" else word
        for _ in range(CALLS):
            with pytest.raises(BackendUnavailable) as caught:
                await charge.consume(ACCOUNT, "api_call")
            assert caught.value.extra["redis_state"] == expected
            assert caught.value.http_status == 503
    if word != "READONLY":  # a replica still answers reads
        with pytest.raises(BackendUnavailable) as caught:
            await engine.get_account(ACCOUNT)
        assert caught.value.extra["redis_state"] == word


def _consume(gw: GatewayServer, keys: dict[str, str]) -> httpx.Response:
    url = f"{gw.url}/v1/accounts/{ACCOUNT}/consume"
    return httpx.post(url, json={"resource": "api_call"}, headers=bearer(keys["service"]))


def _hook(gw: GatewayServer, keys: dict[str, str]) -> httpx.Response:
    hook = {
        "X-Quotagate-Key": keys["hook"],
        "X-Account-Id": ACCOUNT,
        "X-Quota-Resource": "api_call",
    }
    return httpx.get(f"{gw.url}/v1/authz", headers=hook, timeout=10)


def _ready(gw: GatewayServer) -> httpx.Response:
    return httpx.get(f"{gw.url}/readyz", timeout=10)


def _api_failures(closed: GatewayServer, open_: GatewayServer, keys: dict[str, str]) -> None:
    for _ in range(CALLS):
        assert_problem(_consume(closed, keys), 503, "backend_unavailable")
        r = _hook(closed, keys)
        assert_problem(r, 503, "backend_unavailable")
        assert r.headers["x-quota-reason"] == "backend_unavailable"
        r = _hook(open_, keys)
        assert r.status_code == 200, r.text
        assert r.headers["x-quota-degraded"] == "1"
    ready = _ready(closed)
    assert ready.status_code == 503 and ready.json()["redis"] == "down", ready.text


# Every state is made on a redis-server of the test's own, never on the suite's Redis: a cluster
# variant would be this very test again.
@pytest.mark.backend_neutral
async def test_a_transient_redis_state_is_unavailable_and_charges_nothing(
    state: tuple[str, State, Server],
    migrated_database_url: str,  # noqa: F811 - a fixture
    api_keys: dict[str, str],  # noqa: F811 - a fixture
    key_prefix: str,
) -> None:
    word, enter, server = state
    settings = gateway_settings(server.url, migrated_database_url, key_prefix)
    config = {m: parse_config(CONFIG.format(mode=m)) for m in ("closed", "open")}
    engine = CreditEngine.from_url(server.url, config["closed"], prefix=key_prefix)
    unbatched = CreditEngine.from_url(
        server.url, config["closed"], prefix=key_prefix, batching=False
    )
    await engine.initialize()
    await engine.upsert_account(ACCOUNT)
    await engine.credit(ACCOUNT, GRANT)
    try:
        with (
            running_gateway(settings, config["closed"], fresh=False) as closed,
            running_gateway(settings, config["open"], fresh=False) as open_,
        ):
            charged = _consume(closed, api_keys)
            assert charged.json()["remaining"] == GRANT - 1, charged.text
            with enter(server):
                await _engine_failures(engine, unbatched, word)
                _api_failures(closed, open_, api_keys)
            # The state passed: nothing of the above was charged, and charging goes on.
            assert (await engine.consume(ACCOUNT, "api_call")).remaining == GRANT - 2
            assert (await unbatched.consume(ACCOUNT, "api_call")).remaining == GRANT - 3
            r = _hook(closed, api_keys)
            assert r.status_code == 200 and r.headers["x-quota-remaining"] == str(GRANT - 4)
            assert _ready(closed).json()["redis"] == "ok"
    finally:
        await engine.aclose()
        await unbatched.aclose()
