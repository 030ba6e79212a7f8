"""The real system on loopback, all of it private to one simulation run.

A redis-server with an append-only file fsynced on every write, a PostgreSQL cluster of its
own, ``quotagate serve`` gateways and ``quotagate worker`` processes, each on a free port and
in one temporary directory. ``Cluster.close()`` stops every process and removes the
directory; every child also gets SIGKILL if the simulating process dies first.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import redis
from rq import Queue
from tests.jobs.processes import QuotagateProcess, die_with_parent, quotagate_env, run_quotagate
from tests.ledger.support import PostgresProcess, config_text
from tests.support.servers import free_port, redis_server_binary, stop_process

from quotagate.config import Config, parse_config
from quotagate.engine import CreditEngine
from quotagate.jobs import queues
from quotagate.jobs.flush import enqueue_due_flushes

PREFIX = "sim"
"""Key prefix of the simulated deployment (the Redis is private: no other prefix is there)."""

CONFIG_TEXT = config_text(partitions=4)
"""The ledger tests' config: no rate limits, so that the model can say of every charge whether
it passes; the ``monthly`` tier renews by resetting its bucket."""

START_TIMEOUT_SECONDS = 60.0
"""Generous: eight people may share two cores."""


class CommandFailed(AssertionError):
    """A ``quotagate`` command that the simulation needs did not succeed."""


class RedisServer:
    """redis-server with ``appendfsync always``: a restart loses nothing it acknowledged."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.dir = directory
        self.dir.mkdir()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--dir", str(self.dir), "--appendonly", "yes",
            "--appendfsync", "always", "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)
        try:
            _wait(lambda: _pings(client), f"redis-server on port {self.port}")
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM: Redis fsyncs its append-only file and exits."""
        stop_process(self.proc, signal.SIGTERM, 20)
        self.proc = None

    def flushall(self) -> None:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10)
        try:
            client.flushall()
        finally:
            client.close()


def _pings(client: redis.Redis) -> bool:
    with contextlib.suppress(redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
        return bool(client.ping())
    return False


def _wait(check: object, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


class Cluster:
    """Redis, PostgreSQL, gateways and workers of one run; ``close()`` ends them all."""

    def __init__(self, *, gateways: int, workers: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="qg-sim-"))
        self.config: Config = parse_config(CONFIG_TEXT)
        self.config_path = self.dir / "config.toml"
        self.config_path.write_text(CONFIG_TEXT)
        self.redis = RedisServer(self.dir / "redis")
        self.postgres: PostgresProcess | None = None
        self.gateways: list[tuple[int, QuotagateProcess]] = []
        self.workers: list[QuotagateProcess] = []
        self.started_workers = 0
        self.gateway_count, self.worker_count = gateways, workers
        self.keys: dict[str, str] = {}

    # -- start and stop -----------------------------------------------------------------

    def start(self) -> None:
        self.redis.start()
        self.postgres = PostgresProcess()
        self.postgres.start()
        self.cli("migrate")
        for scope in ("admin", "service"):
            made = json.loads(self.cli("keys", "create", "--name", f"sim {scope}",
                                       "--scope", scope, "--json"))  # fmt: skip
            self.keys[scope] = made["key"]
        for _ in range(self.gateway_count):
            self.start_gateway()
        for _ in range(self.worker_count):
            self.start_worker()

    def close(self) -> None:
        for _, gateway in self.gateways:
            gateway.stop()
        for worker in self.workers:
            worker.stop()
        self.redis.stop()
        if self.postgres is not None:
            self.postgres.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def database_url(self) -> str:
        assert self.postgres is not None
        return self.postgres.url

    def env(self) -> dict[str, str]:
        env = quotagate_env(self.redis.url, self.database_url, PREFIX, self.config_path)
        return {
            **env,
            "QUOTAGATE_FLUSH_LEASE_SECONDS": "2",  # a killed worker's lease runs out soon
            "QUOTAGATE_FLUSH_BATCH": "50",  # several batches per flush: kills land mid-flush
            "QUOTAGATE_FLUSH_TRIGGER_ENTRIES": "40",
        }

    def cli(self, *args: str, expect_status: int = 0) -> str:
        """Run one ``quotagate`` command to its end; its stdout."""
        done = run_quotagate(list(args), self.env(), timeout=180)
        if done.returncode != expect_status:
            raise CommandFailed(
                f"`quotagate {' '.join(args)}` exited {done.returncode}:\n"
                f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            )
        return done.stdout

    # -- gateways -------------------------------------------------------------------------

    def start_gateway(self) -> None:
        port = free_port()
        log = self.dir / f"gateway-{port}.log"
        proc = QuotagateProcess(["serve", "--port", str(port), "--workers", "1"], self.env(), log)
        self.gateways.append((port, proc))
        _wait(lambda: _healthy(port, proc), f"the gateway on port {port} (log {log})")

    @property
    def gateway_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port, _ in self.gateways]

    # -- workers --------------------------------------------------------------------------

    def start_worker(self) -> QuotagateProcess:
        self.started_workers += 1
        name = f"sim-worker-{self.started_workers}"
        worker = QuotagateProcess(["worker", "--name", name], self.env(), self.dir / f"{name}.log")
        self.workers.append(worker)
        return worker

    def kill_worker(self, index: int) -> None:
        """SIGKILL one worker (wherever its flush is) and start another in its place."""
        self.workers.pop(index % len(self.workers)).kill()
        self.start_worker()

    def restart_workers(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers = []
        for _ in range(self.worker_count):
            self.start_worker()

    def dead_processes(self) -> list[str]:
        """Logs of gateways or workers that stopped on their own."""
        procs = [p for _, p in self.gateways] + self.workers
        return [f"{p.log.name}:\n{p.output()[-1500:]}" for p in procs if not p.alive()]

    async def enqueue_flushes(self, engine: CreditEngine) -> None:
        """What the scheduler does every second. (The scheduler itself is not run: its daily
        renewal of the current month would change balances behind the model's back.)"""
        conn = redis.Redis.from_url(self.redis.url)
        try:
            queue = Queue(queues.flush_queue_name(PREFIX), connection=conn)
            await enqueue_due_flushes(engine, queue, PREFIX)
        finally:
            conn.close()


def _healthy(port: int, proc: QuotagateProcess) -> bool:
    if not proc.alive():
        raise RuntimeError(f"the gateway on port {port} stopped:\n{proc.output()[-2000:]}")
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
