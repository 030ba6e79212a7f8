"""The data directory of the embedded servers: where it is, who may use it, its secrets.

Layout (all of it inside the one directory, which survives restarts)::

    up.lock          held while a `quotagate up` uses the directory (one at a time)
    secrets.json     generated passwords of the embedded Valkey and PostgreSQL (mode 0600)
    valkey/          Valkey's append-only file
    postgres/        the PostgreSQL cluster (owned by the unprivileged user when run as root)
    logs/            each server's log
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import platformdirs

from quotagate.embedded.process import RunAs
from quotagate.errors import ConfigError

ROOT_DATA_DIR = Path("/var/lib/quotagate")
"""Default data directory for root: PostgreSQL runs as an unprivileged user, who cannot enter
/root, so root's default must be somewhere that user can reach."""

UNPRIVILEGED_USER = "nobody"
"""Who runs PostgreSQL when we are root (PostgreSQL refuses to run as root). It exists on every
Linux system; we never create users."""


def default_data_dir() -> Path:
    """The per-user data directory (``~/.local/share/quotagate`` on Linux), or root's."""
    if os.geteuid() == 0:
        return ROOT_DATA_DIR
    return Path(platformdirs.user_data_dir("quotagate", appauthor=False))


def unprivileged_user() -> RunAs | None:
    """The identity PostgreSQL must run as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        raise ConfigError(
            f"running as root needs the user {UNPRIVILEGED_USER!r} to run PostgreSQL as, "
            "and it does not exist: run as a normal user or set QUOTAGATE_DATABASE_URL"
        ) from None
    return RunAs(uid=entry.pw_uid, gid=entry.pw_gid, name=UNPRIVILEGED_USER)


def reachable_by(user: RunAs, path: Path) -> bool:
    """Whether ``user`` may traverse every directory from / down to ``path``."""
    path = path.resolve()
    for directory in [*reversed(path.parents), path]:
        try:
            st = directory.stat()
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            continue
        if st.st_uid == user.uid:
            bit = stat.S_IXUSR
        elif st.st_gid == user.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


class DataDir:
    """One data directory: created on first use, locked while in use."""

    def __init__(self, path: Path) -> None:
        self.path = path.expanduser().absolute()
        self.valkey = self.path / "valkey"
        self.postgres = self.path / "postgres"
        self.logs = self.path / "logs"
        self._secrets_file = self.path / "secrets.json"

    def create(self) -> None:
        """Create the directory and its private parts (readable by us alone)."""
        try:
            fresh = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
            if fresh and os.geteuid() == 0:
                # The unprivileged PostgreSQL user must pass through (x), not list (r).
                self.path.chmod(0o711)
            for directory in (self.valkey, self.logs):
                directory.mkdir(exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the data directory {self.path}: {exc.strerror}"
            ) from None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the directory's lock: two stacks on one directory would corrupt both stores."""
        with open(self.path / "up.lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(
                    f"another `quotagate up` is using {self.path}: "
                    "stop it or pass another --data-dir"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def secret(self, name: str) -> str:
        """The password called ``name``, generated on first use and kept for later starts."""
        stored: dict[str, str] = {}
        if self._secrets_file.exists():
            stored = json.loads(self._secrets_file.read_text())
        if name not in stored:
            stored[name] = secrets.token_urlsafe(24)
            fd = os.open(self._secrets_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(stored, handle, indent=2)
        return stored[name]
