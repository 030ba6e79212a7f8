"""Helpers for the ledger tests: a config, worker processes, a private PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import redis as sync_redis
from rq import Queue
from tests.support.servers import free_port

from quotagate.config import Config, parse_config
from quotagate.engine import CreditEngine
from quotagate.jobs import queues
from quotagate.jobs.flush import enqueue_due_flushes
from quotagate.ledger import account_books, outbox_lag

CONFIG_TEXT = """
partitions = {partitions}
opening_grant = true
[resources]
api_call = 1
premium_feature = 5
[tiers.free]
credit_limit = 100
monthly_grant = 100
[tiers.pro]
credit_limit = 1000
monthly_grant = 1000
[tiers.monthly]
credit_limit = 500
monthly_grant = 500
renewal = "reset"
"""
"""Opening grants on, no rate limits: every charge the balance allows is accepted. The
``monthly`` tier renews by reset, so renewals write expire and grant transactions."""


def config_text(partitions: int = 8) -> str:
    return CONFIG_TEXT.format(partitions=partitions)


def ledger_config(partitions: int = 8) -> Config:
    return parse_config(config_text(partitions))


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: the child gets SIGKILL if the test process dies first.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


def quotagate_command() -> list[str]:
    script = Path(sys.executable).parent / "quotagate"
    return [str(script)] if script.exists() else [sys.executable, "-m", "quotagate.cli.main"]


class WorkerProcess:
    """``quotagate worker`` in a subprocess, its output in a log file."""

    def __init__(self, env: dict[str, str], log_dir: Path, name: str, *options: str) -> None:
        self.log = log_dir / f"{name}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [*quotagate_command(), "worker", "--name", name, *options],
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)  # RQ's warm shutdown: finish the job
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def worker_env(redis_url: str, database_url: str, prefix: str, config_path: Path) -> dict[str, str]:
    return {
        "QUOTAGATE_REDIS_URL": redis_url,
        "QUOTAGATE_QUEUE_URL": redis_url,
        "QUOTAGATE_DATABASE_URL": database_url,
        "QUOTAGATE_KEY_PREFIX": prefix,
        "QUOTAGATE_CONFIG": str(config_path),
        "QUOTAGATE_FLUSH_LEASE_SECONDS": "2",
        "QUOTAGATE_FLUSH_BATCH": "500",
    }


def _server_binaries() -> Path:
    found = shutil.which("postgres")
    if found:
        return Path(found).resolve().parent
    from quotagate.embedded.postgres import bundled_install

    return bundled_install() / "bin"


class PostgresProcess:
    """A throwaway PostgreSQL cluster on a free loopback port (trust auth), to stop and start.

    Run as ``nobody`` when we are root (PostgreSQL refuses root)."""

    def __init__(self) -> None:
        self.bin = _server_binaries()
        self.dir = Path(tempfile.mkdtemp(prefix="qg-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "nobody"
            entry = pwd.getpwnam(self.user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self._run(
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
             "--no-locale", "--encoding=UTF8", "--no-instructions", "-N"]
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, args: list[str]) -> None:
        subprocess.run(
            args, check=True, user=self.user, cwd=self.dir,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def start(self) -> None:
        args = [
            str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
            "-c", "fsync=off", "-c", "max_connections=50",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            args, user=self.user, cwd=self.dir, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent,
        )  # fmt: skip
        wait_for(self._accepts, 30, f"PostgreSQL on port {self.port}")

    def _accepts(self) -> bool:
        async def ping() -> None:
            conn = await asyncpg.connect(self.url, timeout=2)
            await conn.close()

        # Its own thread and loop: callers may be inside an event loop already.
        with ThreadPoolExecutor(1) as pool:
            try:
                pool.submit(asyncio.run, ping()).result()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                return False
        return True

    def stop(self, *, immediate: bool = False) -> None:
        """Stop the server: SIGQUIT (crash-like, no checkpoint) or SIGINT (fast shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT if immediate else signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def postgres_process() -> Iterator[PostgresProcess]:
    server = PostgresProcess()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


async def assert_books_balance(engine: Any, ledger: Any, account_ids: list[str]) -> None:
    """Every account: Redis = snapshot + pending, snapshot = sum of its ledger rows."""
    books = await account_books(engine, ledger, account_ids)
    off = [b for b in books if not b.balanced or b.redis_credits is None]
    assert not off, f"{len(off)} accounts off the books, e.g. {off[:2]}"


async def ledger_rows(ledger: Any, account_ids: list[str]) -> list[Any]:
    async with ledger.pool.acquire() as conn:
        return list(
            await conn.fetch(
                "SELECT * FROM credit_transactions WHERE account_id = ANY($1::text[])",
                account_ids,
            )
        )


class LedgerStack:
    """A private Redis, an engine on it, the flush queue, and ``quotagate worker`` processes.

    ``schedule()`` does what the ``rq cron`` schedule does every second: enqueue a flush for
    each non-empty partition."""

    def __init__(
        self, redis_url: str, database_url: str, tmp_path: Path, *, partitions: int, prefix: str
    ) -> None:
        self.redis_url, self.database_url, self.tmp_path = redis_url, database_url, tmp_path
        self.prefix = prefix
        self.config_path = tmp_path / "config.toml"
        self.config_path.write_text(config_text(partitions))
        self.engine = CreditEngine.from_url(redis_url, ledger_config(partitions), prefix=prefix)
        self.conn = sync_redis.Redis.from_url(redis_url)
        self.queue = Queue(queues.flush_queue_name(prefix), connection=self.conn)
        self.workers: list[WorkerProcess] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = worker_env(self.redis_url, self.database_url, self.prefix, self.config_path)
        return {**env, **extra}

    def start_worker(self, name: str, **extra_env: str) -> WorkerProcess:
        worker = WorkerProcess(self.env(**extra_env), self.tmp_path, name)
        self.workers.append(worker)
        return worker

    async def schedule(self) -> int:
        return await enqueue_due_flushes(self.engine, self.queue, self.prefix)

    async def waiting(self) -> int:
        return (await outbox_lag(self.engine)).total

    async def drain(self, within_seconds: float = 60.0) -> None:
        """Schedule flushes until every outbox is empty (workers do the flushing)."""
        deadline = asyncio.get_running_loop().time() + within_seconds
        while await self.waiting():
            if asyncio.get_running_loop().time() > deadline:
                logs = "\n".join(w.output()[-2000:] for w in self.workers)
                raise AssertionError(
                    f"outboxes not drained in {within_seconds} s; workers said:\n{logs}"
                )
            await self.schedule()
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        await self.engine.aclose()
        self.conn.close()


async def scheduler(stack: LedgerStack, stop: Any, every_seconds: float = 0.2) -> None:
    """Run the schedule until ``stop`` (an asyncio.Event) is set."""
    while not stop.is_set():
        await stack.schedule()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_seconds)
