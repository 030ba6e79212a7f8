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
from dataclasses import dataclass, field

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
    """How every HTTP server of one run is served: the uvicorn settings of `quotagate serve`."""

    workers: int
    """uvicorn worker processes."""
    log_level: str = field(
        default_factory=lambda: os.environ.get("QUOTAGATE_LOG_LEVEL") or "warning"
    )
    """The servers' log level: warning, unless QUOTAGATE_LOG_LEVEL says otherwise (``info``
    measures the hot path with its access lines written)."""

    def uvicorn_args(self, app: str, port: int) -> list[str]:
        """Command line serving the ASGI app factory ``app`` (``module:function``)."""
        return [
            sys.executable, "-m", "quotagate.api.server", app, "--host", "127.0.0.1",
            "--port", str(port), "--workers", str(self.workers), "--log-level", self.log_level,
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
    def name(self) -> str:
        return " ".join(a for a in self.args[1:5] if not a.startswith("-"))

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
                raise RuntimeError(f"{self.name} exited at start: {self.last_log_line()}")
            if self._healthy():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer within {timeout_s:.0f} s")

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) used so far by the server and its worker processes.

        Linux only (from /proc); None elsewhere. A figure per request that the noise of a shared
        machine moves far less than throughput does.
        """
        return None if self.proc is None else cpu_seconds_of_tree(self.proc.pid)

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


_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds_of_tree(pid: int) -> float | None:
    """CPU time (user + system) used so far by ``pid`` and its descendants; None when /proc
    cannot tell (not Linux, or the process is gone)."""
    try:
        return sum(_cpu_seconds(p) for p in _process_tree(pid))
    except OSError:
        return None


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (uvicorn's workers, and their children)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        for task in os.listdir(f"/proc/{current}/task"):
            with open(f"/proc/{current}/task/{task}/children") as f:
                todo.extend(int(c) for c in f.read().split())
    return out


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        # The command name (field 2) may hold spaces: count fields after its closing paren.
        fields = f.read().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _TICKS_PER_SECOND


@contextlib.contextmanager
def server_process(
    args: list[str], port: int, env: Mapping[str, str], health_path: str = "/healthz"
) -> Iterator[Server]:
    """Run the server ``args`` start (listening on ``port``) for the duration of the block."""
    server = Server(args, port, {**os.environ, **env}, health_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        server.log.close()


@contextlib.contextmanager
def serving(
    app: str, options: ServeOptions, env: Mapping[str, str], health_path: str = "/healthz"
) -> Iterator[Server]:
    """Serve the app factory ``app`` for the duration of the block."""
    port = free_port()
    with server_process(options.uvicorn_args(app, port), port, env, health_path) as server:
        yield server
