"""HTTP servers the benchmark starts on loopback, all run the same way (the same uvicorn settings).

Each server is a child process that dies with the benchmark (``PR_SET_PDEATHSIG`` on Linux),
so an interrupted run leaves nothing listening.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """How every HTTP server of one run is served."""

    workers: int
    """uvicorn worker processes."""

    def uvicorn_args(self, app: str, port: int) -> list[str]:
        """Command line serving the ASGI app factory ``app`` (``module:function``)."""
        return [
            sys.executable, "-m", "uvicorn", app, "--factory",
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(self.workers),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log",
            "--log-level", "warning", "--backlog", "2048",
        ]  # fmt: skip


class Server:
    """A server process on a loopback port; ready once ``health_path`` answers 200."""

    def __init__(self, args: list[str], port: int, env: Mapping[str, str], health_path: str):
        self.args = args
        self.port = port
        self.env = dict(env)
        self.health_path = health_path
        self.proc: subprocess.Popen[bytes] | None = None
        # A file, not a pipe: a server logging many errors would block on a full pipe.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30) -> None:
        self.proc = subprocess.Popen(
            self.args,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server {self.args[3]} exited at start: {self.last_log_line()}")
            if self._healthy():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server {self.args[3]} did not answer within {timeout_s:.0f} s")

    def last_log_line(self) -> str:
        self.log.seek(0)
        lines = self.log.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no output"

    def _healthy(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
        try:
            conn.request("GET", self.health_path)
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def serving(
    app: str, options: ServeOptions, env: Mapping[str, str], health_path: str = "/healthz"
) -> Iterator[Server]:
    """Serve the app factory ``app`` for the duration of the block."""
    port = free_port()
    server = Server(options.uvicorn_args(app, port), port, {**os.environ, **env}, health_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.log.close()
