"""`quotagate` commands as subprocesses, their output in a log file, stopped after the test."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path


def quotagate_command() -> list[str]:
    script = Path(sys.executable).parent / "quotagate"
    return [str(script)] if script.exists() else [sys.executable, "-m", "quotagate.cli.main"]


def die_with_parent() -> None:
    # PR_SET_PDEATHSIG: the child gets SIGKILL if the test process dies first.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


class QuotagateProcess:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [*quotagate_command(), *args],
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no cleanup, the job in hand cut wherever it is."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM (both the worker and the scheduler shut down on it), SIGKILL if stuck."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def run_quotagate(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run one command to its end; stdout and stderr as text."""
    return subprocess.run(
        [*quotagate_command(), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def quotagate_env(redis_url: str, database_url: str, prefix: str, config: Path) -> dict[str, str]:
    return {
        "QUOTAGATE_REDIS_URL": redis_url,
        "QUOTAGATE_QUEUE_URL": redis_url,
        "QUOTAGATE_DATABASE_URL": database_url,
        "QUOTAGATE_KEY_PREFIX": prefix,
        "QUOTAGATE_CONFIG": str(config),
    }
