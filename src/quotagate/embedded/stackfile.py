"""The stack file: how the CLI and Python code find the stack a `quotagate up` runs.

`up` writes ``<data-dir>/stack.json`` (mode 0600: it holds passwords and keys) once every
part of the stack answers, and removes it when it stops. It records the environment the
stack's own processes run with (URLs, key prefix, config file), the gateway's address, the
keys made for the run and the pid of the `up` that wrote it. A file whose `up` is no longer
running is stale: the CLI ignores it (and says so), and the next `up` revokes the keys it
lists, so a killed `up` leaves no key valid for good.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

STACK_FILE_NAME = "stack.json"


@dataclass(frozen=True)
class StackRecord:
    """What a running `quotagate up` tells the commands run beside it."""

    pid: int
    url: str
    redis_url: str
    queue_url: str
    database_url: str
    key_prefix: str
    config_path: str | None = None
    admin_key: str = ""
    service_key: str = ""
    hook_key: str = ""
    key_ids: list[str] = field(default_factory=list)

    def running(self) -> bool:
        """Whether the `up` that wrote this is still alive."""
        return pid_alive(self.pid)

    def environment(self) -> dict[str, str]:
        """The settings the stack's processes run with, as environment variables."""
        env = {
            "QUOTAGATE_REDIS_URL": self.redis_url,
            "QUOTAGATE_QUEUE_URL": self.queue_url,
            "QUOTAGATE_DATABASE_URL": self.database_url,
            "QUOTAGATE_KEY_PREFIX": self.key_prefix,
        }
        if self.config_path:
            env["QUOTAGATE_CONFIG"] = self.config_path
        return env


def stack_file(data_dir: Path) -> Path:
    return data_dir.expanduser().absolute() / STACK_FILE_NAME


def write_record(path: Path, record: StackRecord) -> None:
    """Replace the file in one step, readable by its owner alone."""
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(asdict(record), handle, indent=2)
    partial.replace(path)


def read_record(path: Path) -> StackRecord | None:
    """The record in ``path``; None when there is none or it cannot be read as one."""
    try:
        raw = json.loads(path.read_text())
        return StackRecord(**raw)
    except (OSError, ValueError, TypeError):
        return None


def remove_record(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's
    return True
