"""Child processes that never outlive the parent: own process group, parent-death signal.

Every server and worker that ``quotagate up`` starts goes through :func:`spawn`. Each child
leads a process group of its own, so the terminal's Ctrl-C reaches only ``up``, which then
stops the children in order (gateway first, data stores last) and finally kills whatever is
left in each group. On Linux the kernel also sends each child a signal if ``up`` itself dies
(even by SIGKILL), so nothing is orphaned.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port free on the loopback address right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _parent_death_signal(sig: int) -> Callable[[], None] | None:
    """A preexec hook asking Linux to send ``sig`` to the child when its parent dies."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def hook() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        # The parent may have died between fork and prctl: then nobody would send the signal.
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return hook


@dataclass(frozen=True)
class RunAs:
    """An unprivileged identity to run a child as (only used when we are root)."""

    uid: int
    gid: int
    name: str


@dataclass
class Child:
    """One started child process and how to stop it gracefully."""

    name: str
    proc: subprocess.Popen[bytes]
    stop_signal: int = signal.SIGTERM
    stop_timeout_seconds: float = 15.0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        """Signal the leader, wait for it, then kill anything left in its group."""
        self.ask_to_stop()
        return self.finish_stop()

    def ask_to_stop(self) -> None:
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(self.stop_signal)

    def finish_stop(self) -> int | None:
        try:
            self.proc.wait(self.stop_timeout_seconds)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        # Workers forked by the leader (uvicorn workers, RQ work horses) share its group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode


def stop_all(children: Sequence[Child]) -> None:
    """Stop several children at once: all are signalled, then each is waited for."""
    for child in children:
        child.ask_to_stop()
    for child in children:
        child.finish_stop()


def spawn(
    name: str,
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdout: IO[bytes] | IO[str] | int | None = None,
    cwd: Path | None = None,
    run_as: RunAs | None = None,
    stop_signal: int = signal.SIGTERM,
    stop_timeout_seconds: float = 15.0,
) -> Child:
    """Start ``args`` in a new process group; stderr goes where stdout goes."""
    proc = subprocess.Popen(
        list(args),
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        start_new_session=True,
        user=run_as.uid if run_as else None,
        group=run_as.gid if run_as else None,
        extra_groups=[] if run_as else None,
        # Set after the uid change (which would clear it): the child hears of our death.
        preexec_fn=_parent_death_signal(stop_signal),
    )
    return Child(name, proc, stop_signal, stop_timeout_seconds)


def wait_until(
    ready: Callable[[], bool],
    *,
    child: Child,
    timeout_seconds: float,
    interval_seconds: float = 0.05,
) -> bool:
    """Poll ``ready`` until it is true; False if ``child`` exited or time ran out."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if ready():
            return True
        if not child.running():
            return False
        time.sleep(interval_seconds)
    return ready()


def last_lines(path: Path, count: int = 3) -> str:
    """The end of a log file, for an error message that says why a server did not start."""
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " / ".join(line.strip() for line in lines[-count:])
