"""The local stack of `quotagate up`: data stores, migrations, keys, gateway, worker, scheduler.

Redis and PostgreSQL come from QUOTAGATE_REDIS_URL / QUOTAGATE_DATABASE_URL when set, and are
otherwise embedded servers with their data in one directory. Every other part is a `quotagate`
subcommand run as a child process with the stack's environment, so `up` runs exactly what an
operator would run by hand. :meth:`LocalStack.stop` takes everything down in reverse order:
gateway and jobs first (they stop taking work), then the data stores (which flush to disk).

Nothing is written before what the stack needs is known to be there: the configured stores
answer, the embedded servers are installed. The stack file (quotagate.embedded.stackfile)
tells the commands run beside the stack where it is; the keys it lists are revoked when
the stack stops, or by the next start if this one was killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from quotagate.embedded.cluster import EmbeddedCluster
from quotagate.embedded.datadir import DataDir
from quotagate.embedded.postgres import EmbeddedPostgres, bundled_install
from quotagate.embedded.process import Child, spawn, stop_all, wait_until
from quotagate.embedded.stackfile import (
    StackRecord,
    read_record,
    remove_record,
    stack_file,
    write_record,
)
from quotagate.embedded.valkey import EmbeddedValkey, valkey_binary
from quotagate.errors import ConfigError, StackError
from quotagate.settings import Settings

GATEWAY_START_TIMEOUT_SECONDS = 60.0
COMMAND_TIMEOUT_SECONDS = 180.0
"""Migrations on a large ledger take a while; key creation takes a moment."""

APP_STOP_TIMEOUT_SECONDS = 20.0
"""Long enough for uvicorn to finish requests in flight and for a worker to end its job."""


@dataclass(frozen=True)
class StackInfo:
    """What `up` prints: where the gateway is, the keys made for this run, the stores."""

    url: str
    admin_key: str
    service_key: str
    hook_key: str
    redis_url: str
    database_url: str
    embedded: tuple[str, ...]
    data_dir: Path


@dataclass
class LocalStack:
    settings: Settings
    port: int
    data_dir: Path
    log: IO[str] = field(default_factory=lambda: sys.stderr)
    """Where the children's output and our progress lines go (never stdout: --json owns it)."""

    cluster_masters: int = 0
    """Masters of an embedded Redis Cluster to start instead of one Valkey (0: none)."""

    servers: list[Child] = field(default_factory=list)
    apps: list[Child] = field(default_factory=list)
    key_ids: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    wrote_stack_file: bool = False
    _queue_url: str = ""
    _exit: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    # -- start -------------------------------------------------------------------------------

    def start(self) -> StackInfo:
        """Bring everything up. Call :meth:`stop` afterwards whatever happens, failures too."""
        _check_port_free(self.port)
        self._check_configured_stores()
        self._check_embedded_installed()
        directory = DataDir(self.data_dir)
        directory.create()
        self._exit.enter_context(directory.locked())
        self._say(f"data directory {directory.path}")
        redis_url, database_url, embedded = self._stores(directory)
        self.env = _child_env(redis_url, database_url)
        if self._queue_url:
            self.env["QUOTAGATE_QUEUE_URL"] = self._queue_url
        self._say("running migrations")
        self._run(["migrate"])
        self._revoke_stale_keys()
        admin_key, service_key, hook_key = self._create_keys("admin", "service", "hook")
        url = f"http://127.0.0.1:{self.port}"
        self._write_stack_file(url, admin_key, service_key, hook_key)
        self._say(f"starting the gateway on {url}, a worker and the scheduler")
        gateway = self._spawn_app(
            "gateway", ["serve", "--host", "127.0.0.1", "--port", str(self.port)]
        )
        # The jobs log a few lines a second: to files, so the gateway's lines stay readable.
        self._spawn_app("worker", ["worker"], log=directory.logs / "worker.log")
        self._spawn_app("scheduler", ["scheduler"], log=directory.logs / "scheduler.log")
        if not wait_until(
            _healthy(url), child=gateway, timeout_seconds=GATEWAY_START_TIMEOUT_SECONDS
        ):
            if not gateway.running():
                code = gateway.proc.returncode
                raise StackError(f"the gateway exited with status {code} (its output is above)")
            raise StackError(f"the gateway did not answer on {url}/healthz (its output is above)")
        return StackInfo(
            url=url,
            admin_key=admin_key,
            service_key=service_key,
            hook_key=hook_key,
            redis_url=redis_url,
            database_url=database_url,
            embedded=tuple(embedded),
            data_dir=directory.path,
        )

    def _stores(self, directory: DataDir) -> tuple[str, str, list[str]]:
        redis_url = str(self.settings.redis_url)
        database_url = str(self.settings.database_url)
        embedded: list[str] = []
        wanted = self._embedded()
        if "redis_url" in wanted and self.cluster_masters:
            cluster = EmbeddedCluster(directory, self.cluster_masters)
            self.servers.extend(cluster.start())
            redis_url, self._queue_url = cluster.url, cluster.queue_url
            embedded.append("redis")
            ports = ", ".join(str(node.port) for node in cluster.nodes)
            self._say(f"embedded Redis Cluster of {self.cluster_masters} masters on ports {ports}")
            self._say(f"embedded Valkey for the queues on 127.0.0.1:{cluster.queue.port}")
        elif "redis_url" in wanted:
            valkey = EmbeddedValkey(directory)
            self.servers.append(valkey.start())
            redis_url = valkey.url
            embedded.append("redis")
            self._say(f"embedded Valkey on 127.0.0.1:{valkey.port}")
        if "database_url" in wanted:
            postgres = EmbeddedPostgres(directory)
            self.servers.append(postgres.start())
            database_url = postgres.url
            embedded.append("postgres")
            self._say(f"embedded PostgreSQL on 127.0.0.1:{postgres.port}")
        return redis_url, database_url, embedded

    def _embedded(self) -> set[str]:
        return {"redis_url", "database_url"} - self.settings.explicit

    def _check_configured_stores(self) -> None:
        """The stores named in the environment answer, or nothing starts (exit 3)."""
        from quotagate.cli import pgserver
        from quotagate.cli.failures import translated
        from quotagate.cli.preflight import check_layout

        with translated(self.settings):
            if "redis_url" in self.settings.explicit:
                check_layout(self.settings, self.settings.load_config().partitions)
            if "database_url" in self.settings.explicit:
                pgserver.check(self.settings, "server")

    def _check_embedded_installed(self) -> None:
        """Before the data directory is made: a failed start leaves no secrets behind."""
        wanted = self._embedded()
        if "redis_url" in wanted:
            valkey_binary()
        if "database_url" in wanted:
            bundled_install()

    def _stack_file(self) -> Path:
        return stack_file(self.data_dir)

    def _revoke_stale_keys(self) -> None:
        """Revoke the keys of an `up` of this data directory that was killed."""
        stale = read_record(self._stack_file())
        if stale is None or stale.running() or not stale.key_ids:
            return
        self._say(f"revoking the {len(stale.key_ids)} keys of the `up` that was stopped")
        self._run(*(["keys", "revoke", key_id] for key_id in stale.key_ids))
        remove_record(self._stack_file())

    def _write_stack_file(self, url: str, admin_key: str, service_key: str, hook_key: str) -> None:
        record = StackRecord(
            pid=os.getpid(),
            url=url,
            redis_url=self.env["QUOTAGATE_REDIS_URL"],
            queue_url=self.env["QUOTAGATE_QUEUE_URL"],
            database_url=self.env["QUOTAGATE_DATABASE_URL"],
            key_prefix=self.settings.key_prefix,
            config_path=self.settings.config_path,
            admin_key=admin_key,
            service_key=service_key,
            hook_key=hook_key,
            key_ids=list(self.key_ids),
        )
        write_record(self._stack_file(), record)
        self.wrote_stack_file = True

    def _create_keys(self, *scopes: str) -> list[str]:
        """One new key per scope, named for this run; their ids are kept to revoke them."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        outputs = self._run(
            *(["keys", "create", "--name", f"up-{scope}-{stamp}", "--scope", scope, "--json"]
              for scope in scopes)
        )  # fmt: skip
        keys = []
        for out in outputs:
            try:
                created = json.loads(out.strip().splitlines()[-1])
                keys.append(str(created["key"]))
                self.key_ids.append(str(created["id"]))
            except (ValueError, KeyError, IndexError, TypeError):
                printed = out.strip()[:200]
                raise StackError(f"`quotagate keys create` printed no key: {printed!r}") from None
        return keys

    def _spawn_app(self, name: str, args: Sequence[str], log: Path | None = None) -> Child:
        """Start a long-running subcommand; its output goes to ``log`` or to ours."""
        with contextlib.ExitStack() as files:
            out = files.enter_context(open(log, "ab")) if log is not None else self.log
            child = spawn(
                name,
                _quotagate(*args),
                env=self.env,
                stdout=out,
                stop_timeout_seconds=APP_STOP_TIMEOUT_SECONDS,
            )
        self.apps.append(child)
        return child

    def _run(self, *commands: Sequence[str]) -> list[str]:
        """Run `quotagate` subcommands side by side to their end; their stdouts, in order.

        Each costs a Python start-up (most of a second): side by side, the stack starts and
        stops sooner. Their stderr is shown as it comes.
        """
        running = [
            subprocess.Popen(
                _quotagate(*args), env=self.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=self.log, text=True, start_new_session=True,
            )
            for args in commands
        ]  # fmt: skip
        deadline = time.monotonic() + COMMAND_TIMEOUT_SECONDS
        outputs = []
        try:
            for args, proc in zip(commands, running, strict=True):
                try:
                    out, _ = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise StackError(f"`quotagate {args[0]}` did not finish in time") from None
                if proc.returncode != 0:
                    raise StackError(
                        f"`quotagate {' '.join(args[:2])}` failed with status "
                        f"{proc.returncode} (its message is above)"
                    )
                outputs.append(out)
        finally:
            for proc in running:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                if proc.stdout:
                    proc.stdout.close()
        return outputs

    # -- run and stop -----------------------------------------------------------------------

    def exited(self) -> Child | None:
        """The first part of the stack that stopped on its own, if any."""
        return next((c for c in [*self.servers, *self.apps] if not c.running()), None)

    def stop(self) -> None:
        """Stop the gateway and jobs, retire this run's keys, then stop the data stores."""
        stop_all(self.apps)
        self.apps.clear()
        if self.key_ids and all(c.running() for c in self.servers):
            with contextlib.suppress(StackError):
                self._run(*(["keys", "revoke", key_id] for key_id in self.key_ids))
                self.key_ids.clear()
        if self.wrote_stack_file and not self.key_ids:
            remove_record(self._stack_file())
            self.wrote_stack_file = False
        # Keys not revoked stay listed in the stack file, for the next start to revoke.
        self.key_ids.clear()
        for child in reversed(self.servers):
            child.stop()
        self.servers.clear()
        self._exit.close()

    def started(self) -> bool:
        """Whether any process of the stack was started (and so needs stopping)."""
        return bool(self.servers or self.apps)

    def _say(self, line: str) -> None:
        print(f"quotagate up: {line}", file=self.log, flush=True)


def _quotagate(*args: str) -> list[str]:
    """The command line of a `quotagate` subcommand in this same Python environment."""
    return [sys.executable, "-m", "quotagate.cli.main", *args]


def _child_env(redis_url: str, database_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env["QUOTAGATE_REDIS_URL"] = redis_url
    env["QUOTAGATE_DATABASE_URL"] = database_url
    # The queues follow the data unless the operator pointed them elsewhere.
    env.setdefault("QUOTAGATE_QUEUE_URL", redis_url)
    if not env["QUOTAGATE_QUEUE_URL"]:
        env["QUOTAGATE_QUEUE_URL"] = redis_url
    env["PYTHONUNBUFFERED"] = "1"
    # A local stack is read by a person in a terminal: text lines, unless told otherwise
    # (a deployment's `quotagate serve` keeps JSON, for its log collector).
    env.setdefault("QUOTAGATE_LOG_FORMAT", "text")
    return env


def _check_port_free(port: int) -> None:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise ConfigError(f"port {port} is in use: pass another --port") from None


def _healthy(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    return check
