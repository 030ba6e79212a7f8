"""Every command of the CLI tree with Redis down, with PostgreSQL down, with the database
missing, and with Redis laid out in another partition count than the config's: one line on
stderr, the documented exit status, no traceback, nothing written.

The table below must name every command the CLI has (the first test walks the click tree),
so a new command cannot be left out. "Down" is a closed loopback port.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import click
import pytest
import redis
from tests.cli.runner import invoke
from tests.jobs.processes import quotagate_command, quotagate_env
from tests.support.servers import free_port

from quotagate.cli.main import cli
from quotagate.cli.preflight import NEEDS
from quotagate.engine.keys import KeySpace

CONFIG = (
    "partitions = 4\n[resources]\nunit = 1\n[tiers.free]\ncredit_limit = 100\nmonthly_grant = 100\n"
)

RUNS = "runs"
"""The command keeps running without this backend (it serves or waits): checked as a process
that is still up after a few seconds."""


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    redis_down: int | str
    postgres_down: int | str
    database_missing: int | str | None
    """None: not run (the reason is beside it)."""
    process: bool = False
    """Run as a process (long-running commands, or ones that change this process)."""


CASES: dict[str, Case] = {
    "accounts create": Case(("accounts", "create", "new"), 3, 3, 2),
    "accounts update": Case(("accounts", "update", "t0", "--tier", "free"), 3, 3, 2),
    "accounts show": Case(("accounts", "show", "t0"), 3, 0, 0),
    "accounts list": Case(("accounts", "list"), 3, 3, 2),
    "accounts grant": Case(("accounts", "grant", "t0", "5", "--expires-in", "30d"), 3, 3, 2),
    "accounts grants": Case(("accounts", "grants", "t0"), 3, 0, 0),
    "accounts void-grant": Case(("accounts", "void-grant", "t0", "0190c1d2-aaaa"), 3, 3, 2),
    "grant": Case(("grant", "t0", "5"), 3, 3, 2),
    "history": Case(("history", "t0"), 3, 3, 2),
    "usage": Case(("usage", "t0"), 3, 3, 2),
    "shadow report": Case(("shadow", "report", "t0"), 3, 3, 2),
    "shadow reset": Case(("shadow", "reset", "t0"), 3, 0, 0),
    "alerts": Case(("alerts",), 0, 3, 2),
    "webhooks deliveries": Case(("webhooks", "deliveries"), 0, 3, 2),
    "webhooks redeliver": Case(("webhooks", "redeliver", "--dead"), 0, 3, 2),
    # bench makes a database of its own, so a missing one is no failure (and takes minutes).
    "bench": Case(("bench", "--quick", "--only", "engine"), 3, 3, None),
    "env": Case(("env",), 2, 2, 2),  # reads only the stack file, and there is none
    "keys create": Case(("keys", "create", "--name", "t", "--scope", "read"), 0, 3, 2),
    "keys list": Case(("keys", "list"), 0, 3, 2),
    "keys revoke": Case(("keys", "revoke", "nosuchkey"), 2, 3, 2),
    "migrate": Case(("migrate",), 0, 3, 0),  # a missing database is created
    "worker": Case(("worker", "--burst"), 3, 3, 2),
    "flush": Case(("flush",), 3, 3, 2),
    "status": Case(("status",), 3, 0, 2),
    "renew": Case(("renew",), 3, 0, 0),
    "reconcile": Case(("reconcile",), 3, 3, 2),
    "recover": Case(("recover",), 3, 3, 2),
    "expire-holds": Case(("expire-holds",), 3, 0, 0),
    "scheduler": Case(("scheduler",), 3, RUNS, RUNS, process=True),
    "serve": Case(("serve", "--workers", "1", "--port", "{port}"), 3, RUNS, 2, process=True),
    # up with a missing database creates it and runs a whole stack: tests/embedded covers it.
    "up": Case(("up", "--port", "{port}", "--data-dir", "{tmp}"), 3, 3, None, process=True),
}


def command_paths(group: click.Group, prefix: str = "") -> Iterator[str]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from command_paths(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}"


def test_every_command_is_in_the_table_and_in_the_preflight() -> None:
    paths = set(command_paths(cli))
    assert paths == set(CASES), "add the new command to CASES here"
    assert paths == set(NEEDS)


def _closed_port() -> int:
    return free_port()  # bound, read and closed again: nothing listens there


@pytest.fixture
def base_env(
    redis_url: str, own_ledger_url: str, key_prefix: str, tmp_path: Path
) -> dict[str, str]:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    env = quotagate_env(redis_url, own_ledger_url, key_prefix, config)
    env["QUOTAGATE_DATA_DIR"] = str(tmp_path / "data")
    done = invoke(["accounts", "create", "t0", "--json"], env)
    assert done.code == 0, done.stderr
    return env


def _database_missing(env: dict[str, str]) -> tuple[dict[str, str], str]:
    name = f"qg_missing_{uuid.uuid4().hex[:10]}"
    base = env["QUOTAGATE_DATABASE_URL"].rsplit("/", 1)[0]
    return {**env, "QUOTAGATE_DATABASE_URL": f"{base}/{name}"}, name


async def _drop(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        await conn.close()


RUNS_CHECK_SECONDS = 6
"""How long a command expected to keep running must stay up."""

EXIT_WAIT_SECONDS = 60
"""How long a command expected to stop may take (Python starts slowly on a loaded machine)."""


def _run(
    case: Case, env: dict[str, str], tmp: Path, expected: int | str | None = None
) -> tuple[int | str, str]:
    args = [a.format(port=free_port(), tmp=tmp / "updata") for a in case.args]
    if not case.process:
        done = invoke(args, env)
        return done.code, done.stderr
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QUOTAGATE_")}
    proc = subprocess.Popen(
        [*quotagate_command(), *args], env={**clean, **env}, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        wait = RUNS_CHECK_SECONDS if expected in (RUNS, None) else EXIT_WAIT_SECONDS
        _, err = proc.communicate(timeout=wait)
        return proc.returncode, err
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        return RUNS, ""


def _check(path: str, expected: int | str, code: int | str, stderr: str) -> None:
    assert "Traceback" not in stderr, (path, stderr)
    assert code == expected, (path, code, stderr)
    if isinstance(expected, int) and expected != 0:
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (path, stderr)


@pytest.mark.parametrize("path", sorted(CASES))
def test_with_redis_down(path: str, base_env: dict[str, str], tmp_path: Path) -> None:
    down = f"redis://127.0.0.1:{_closed_port()}/0"
    env = {**base_env, "QUOTAGATE_REDIS_URL": down, "QUOTAGATE_QUEUE_URL": down}
    code, stderr = _run(CASES[path], env, tmp_path, CASES[path].redis_down)
    _check(path, CASES[path].redis_down, code, stderr)
    if code == 3:
        assert down.rsplit(":", 1)[1].split("/")[0] in stderr  # the port it tried
        if NEEDS[path].redis == "required":
            assert f"error: Redis at {down} (from QUOTAGATE_REDIS_URL) did not answer" in stderr


@pytest.mark.parametrize("path", sorted(CASES))
def test_with_postgres_down(path: str, base_env: dict[str, str], tmp_path: Path) -> None:
    down = f"postgresql://postgres@127.0.0.1:{_closed_port()}/quotagate"
    env = {**base_env, "QUOTAGATE_DATABASE_URL": down}
    code, stderr = _run(CASES[path], env, tmp_path, CASES[path].postgres_down)
    _check(path, CASES[path].postgres_down, code, stderr)
    if code == 3:
        assert down.rsplit(":", 1)[1].split("/")[0] in stderr  # the port it tried
        if NEEDS[path].postgres in ("required", "server"):
            expected = f"error: PostgreSQL at {down} (from QUOTAGATE_DATABASE_URL) did not answer"
            assert expected in stderr


@pytest.mark.parametrize(
    "path", sorted(p for p, c in CASES.items() if c.database_missing is not None)
)
def test_with_the_database_missing(path: str, base_env: dict[str, str], tmp_path: Path) -> None:
    env, name = _database_missing(base_env)
    try:
        code, stderr = _run(CASES[path], env, tmp_path, CASES[path].database_missing)
    finally:
        asyncio.run(_drop(base_env["QUOTAGATE_DATABASE_URL"], name))
    _check(path, CASES[path].database_missing or 0, code, stderr)
    if code == 2 and path not in ("env", "keys revoke"):
        assert f"has no database {name!r}: run `quotagate migrate`, which creates it" in stderr


LAYOUT_EXEMPT = {
    "bench": "works under a key prefix of its own",
    "env": "talks to no server",
    "keys create": "writes only the key hashes' copy, which no partition holds",
    "keys list": "reads PostgreSQL only",
    "alerts": "reads PostgreSQL only",
    "webhooks deliveries": "reads PostgreSQL only",
    "webhooks redeliver": "writes PostgreSQL only",
    "keys revoke": "writes only the key hashes' copy, which no partition holds",
    "migrate": "PostgreSQL only",
    "scheduler": "enqueues on the queue Redis; the jobs it enqueues check for themselves",
    "up": "starts its commands, which check for themselves",
}


def test_the_layout_check_covers_every_command_that_touches_partitions() -> None:
    checked = {p for p, n in NEEDS.items() if n.redis == "required" and n.layout}
    assert checked | set(LAYOUT_EXEMPT) == set(NEEDS)
    assert not checked & set(LAYOUT_EXEMPT)


def _keys_under(client: redis.Redis, prefix: str) -> dict[bytes, bytes]:
    """Every key of the prefix with a digest of its value: any write shows."""
    return {k: client.dump(k) or b"" for k in client.scan_iter(match=f"{prefix}:*")}


@pytest.mark.parametrize(
    "path", sorted(p for p, n in NEEDS.items() if n.redis == "required" and n.layout)
)
def test_a_partition_count_other_than_the_datas_is_refused_before_anything_runs(
    path: str, base_env: dict[str, str], redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_url)
    client.hset(KeySpace(key_prefix, 4).meta, "partitions", "8")
    before = _keys_under(client, key_prefix)
    case = CASES[path]
    args = case.args + (("--repair",) if path == "reconcile" else ())
    code, stderr = _run(Case(args, 0, 0, 0, case.process), base_env, tmp_path)
    _check(path, 2, code, stderr)
    assert "holds data laid out in 8 partitions" in stderr, stderr
    assert _keys_under(client, key_prefix) == before
    client.close()
