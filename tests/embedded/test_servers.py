"""The embedded Valkey and PostgreSQL: start, keep data across restarts, stop without leftovers."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest
import redis
from tests.embedded.unprivileged import python_for

from quotagate.embedded import DataDir, EmbeddedPostgres, EmbeddedValkey
from quotagate.embedded.datadir import reachable_by, unprivileged_user
from quotagate.embedded.process import RunAs
from quotagate.errors import ConfigError

IS_ROOT = os.geteuid() == 0


@pytest.fixture
def data_dir() -> Iterator[DataDir]:
    # Not pytest's tmp_path: it sits under a 0700 directory that `nobody` cannot enter.
    parent = Path(tempfile.mkdtemp(prefix="qg-embedded-"))
    parent.chmod(0o755)
    directory = DataDir(parent / "data")
    directory.create()
    yield directory
    shutil.rmtree(parent, ignore_errors=True)


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def test_valkey_keeps_data_across_restarts_and_needs_its_password(data_dir: DataDir) -> None:
    server = EmbeddedValkey(data_dir)
    child = server.start()
    try:
        client = redis.Redis.from_url(server.url)
        client.set("qg-embedded-test", "kept")
        client.close()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port).ping()
        assert server.password not in " ".join(psutil.Process(child.pid).cmdline())
    finally:
        assert child.stop() == 0

    again = EmbeddedValkey(data_dir)
    child = again.start()
    try:
        assert again.port != 0
        client = redis.Redis.from_url(again.url)
        assert client.get("qg-embedded-test") == b"kept"
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.close()
    finally:
        assert child.stop() == 0
    assert any(data_dir.valkey.rglob("*.aof")), "no append-only file was written"


async def _query(url: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        if ";" in sql:
            await conn.execute(sql)
            return []
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


def test_postgres_keeps_data_across_restarts(data_dir: DataDir) -> None:
    server = EmbeddedPostgres(data_dir)
    child = server.start()
    try:
        asyncio.run(_query(server.url, "CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)"))
        backends = [p.pid for p in psutil.Process(child.pid).children(recursive=True)]
        assert backends, "a running PostgreSQL has helper processes"
    finally:
        assert child.stop() == 0
    assert _alive([child.pid, *backends]) == []

    again = EmbeddedPostgres(data_dir)
    child = again.start()
    try:
        rows = asyncio.run(_query(again.url, "SELECT n FROM kept"))
        assert [r["n"] for r in rows] == [7]
        # Loopback TCP only: no Unix socket left in /tmp.
        assert not Path(f"/tmp/.s.PGSQL.{again.port}").exists()
    finally:
        child.stop()


@pytest.mark.skipif(not IS_ROOT, reason="only root hands PostgreSQL to an unprivileged user")
def test_as_root_postgres_runs_as_nobody_and_owns_only_its_directory(data_dir: DataDir) -> None:
    user = unprivileged_user()
    assert user is not None
    server = EmbeddedPostgres(data_dir)
    child = server.start()
    try:
        assert psutil.Process(child.pid).uids().real == user.uid
    finally:
        child.stop()
    assert data_dir.postgres.stat().st_uid == user.uid
    assert data_dir.path.stat().st_uid == 0
    assert data_dir.path.parent.stat().st_uid == 0
    assert not (data_dir.path / "postgres.pwfile").exists()


@pytest.mark.skipif(not IS_ROOT, reason="needs root to run a child as another user")
def test_as_a_normal_user_both_servers_start(data_dir: DataDir) -> None:
    user = unprivileged_user()
    assert user is not None
    python = python_for(user)
    if python is None:
        pytest.skip(
            f"{user.name} cannot reach this environment's Python, and there is no system "
            "Python of the same version that can load this environment's packages"
        )
    os.chown(data_dir.path, user.uid, user.gid)
    for sub in (data_dir.valkey, data_dir.logs):
        os.chown(sub, user.uid, user.gid)
    script = (
        "from pathlib import Path\n"
        "from quotagate.embedded import DataDir, EmbeddedPostgres, EmbeddedValkey\n"
        f"d = DataDir(Path({str(data_dir.path)!r}))\n"
        "with d.locked():\n"
        "    v = EmbeddedValkey(d); vc = v.start()\n"
        "    p = EmbeddedPostgres(d); pc = p.start()\n"
        "    print(p.run_as, pc.stop(), vc.stop())\n"
    )
    done = subprocess.run(
        [python[0], "-c", script],
        user=user.uid,
        group=user.gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(data_dir.path), **python[1]},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None 0 0"


def test_a_second_user_of_a_data_dir_is_refused(data_dir: DataDir) -> None:
    refused = pytest.raises(ConfigError, match="another `quotagate up`")
    with data_dir.locked(), refused, DataDir(data_dir.path).locked():
        pass
    with DataDir(data_dir.path).locked():
        pass  # free again once the first let go


def test_data_from_another_postgres_major_version_is_refused(data_dir: DataDir) -> None:
    data_dir.postgres.mkdir()
    (data_dir.postgres / "PG_VERSION").write_text("9\n")
    with pytest.raises(ConfigError, match="holds PostgreSQL 9 data"):
        EmbeddedPostgres(data_dir).start()
    assert (data_dir.postgres / "PG_VERSION").read_text() == "9\n"


def test_reachable_by_follows_every_parent(data_dir: DataDir) -> None:
    stranger = RunAs(uid=65534, gid=65534, name="nobody")
    private = data_dir.path / "private"
    inner = private / "inner"
    inner.mkdir(parents=True)
    private.chmod(0o700)
    inner.chmod(0o755)
    assert not reachable_by(stranger, inner)
    private.chmod(0o711)
    assert reachable_by(stranger, inner)


def test_servers_stop_when_their_parent_is_killed(data_dir: DataDir) -> None:
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from quotagate.embedded import DataDir, EmbeddedValkey\n"
        f"v = EmbeddedValkey(DataDir(Path({str(data_dir.path)!r})))\n"
        "c = v.start(); print(c.pid, flush=True); time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    with parent.stdout:
        server_pid = int(parent.stdout.readline())
    assert _alive([server_pid]) == [server_pid]
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive([server_pid]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive([server_pid]) == []
