"""quotagate.cli.backends, the one place the CLI opens its connections: each command gets what
it asks for and no more, on real Redis and PostgreSQL, and everything is closed afterwards."""

from __future__ import annotations

import ast
import asyncio
import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from tests.jobs.ledger_db import new_database
from tests.support.servers import free_port

import quotagate.cli
from quotagate.cli.backends import Backends, run
from quotagate.errors import BackendUnavailable, ConfigError
from quotagate.ledger.migrate import head_revision

CONFIG = (
    "partitions = 4\n[resources]\nunit = 1\n[tiers.free]\ncredit_limit = 100\nmonthly_grant = 100\n"
)

OPENERS = frozenset(
    {"Redis", "from_url", "connect", "KeyStore", "CreditEngine", "open_engine", "open_ledger",
     "engine_from", "LedgerLink", "create_pool"}
)  # fmt: skip
"""Calls that open a connection to Redis or PostgreSQL, or build what holds one."""

PROBES = {
    "preflight.py": "checks that Redis answers and its layout before a command runs",
    "pgserver.py": "checks that PostgreSQL answers and creates the database for `migrate`",
    "serve.py": "starts the gateway's own ledger link once, to fail before uvicorn starts",
}
"""CLI modules that open connections of their own, and why: each checks a server before the
command's work, and closes what it opened at once."""


@pytest.fixture
def env(
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    own_ledger_url: str,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    for name, value in {
        "QUOTAGATE_REDIS_URL": redis_url,
        "QUOTAGATE_QUEUE_URL": redis_url,
        "QUOTAGATE_DATABASE_URL": own_ledger_url,
        "QUOTAGATE_KEY_PREFIX": key_prefix,
        "QUOTAGATE_CONFIG": str(config),
    }.items():
        monkeypatch.setenv(name, value)


async def _count_sessions(database_url: str) -> int:
    """Connections to ``database_url``'s database other than the one that asks."""
    conn = await asyncpg.connect(database_url)
    try:
        value = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            urlsplit(database_url).path.lstrip("/"),
        )
        return int(value)
    finally:
        await conn.close()


def _sessions(database_url: str) -> int:
    return asyncio.run(_count_sessions(database_url))


def _sessions_settle(database_url: str, expected: int) -> int:
    """The count once it reaches ``expected`` (a server ends a closed session a moment later),
    or the last count after two seconds."""
    deadline = time.monotonic() + 2
    while (seen := _sessions(database_url)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return seen


@pytest.mark.usefixtures("env")
def test_a_command_gets_what_it_asks_for_and_it_is_closed_afterwards(own_ledger_url: str) -> None:
    async def work(b: Backends) -> tuple[str | None, int, bool]:
        assert b.ledger is not None and b.keys is not None
        await b.engine.redis.ping()
        revision = await b.ledger.schema_revision()
        keys = await b.keys.all()
        return revision, len(keys), await _count_sessions(own_ledger_url) > 0

    revision, keys, connected = run(work, keys=True)
    assert (revision, keys, connected) == (head_revision(), 0, True)
    assert _sessions_settle(own_ledger_url, 0) == 0


def test_without_a_ledger_postgresql_is_not_touched(
    env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUOTAGATE_DATABASE_URL", f"postgresql://127.0.0.1:{free_port()}/none")

    async def work(b: Backends) -> tuple[bool, bool, bool]:
        return await b.engine.redis.ping(), b.ledger is None, b.keys is None

    assert run(work, ledger=None) == (True, True, True)


def test_an_unchecked_ledger_lets_the_command_go_on_without_postgresql(
    env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUOTAGATE_DATABASE_URL", f"postgresql://127.0.0.1:{free_port()}/none")

    async def work(b: Backends) -> str:
        assert b.ledger is not None
        with pytest.raises(BackendUnavailable):
            await b.ledger.ping()
        return "went on"

    assert run(work, ledger="unchecked") == "went on"
    with pytest.raises(BackendUnavailable, match="PostgreSQL"):
        run(work)


def test_a_current_ledger_refuses_a_database_never_migrated(
    env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def work(b: Backends) -> str:
        return "ran"

    with new_database(migrated=False) as database_url:
        monkeypatch.setenv("QUOTAGATE_DATABASE_URL", database_url)
        with pytest.raises(ConfigError, match="quotagate migrate"):
            run(work)
        assert run(work, ledger="unchecked") == "ran"
        assert _sessions_settle(database_url, 0) == 0


def test_redis_away_is_one_backend_error(env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUOTAGATE_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")

    async def work(b: Backends) -> object:
        return await b.engine.redis.ping()

    with pytest.raises(BackendUnavailable, match=r"^Redis did not answer"):
        run(work, ledger=None)


def _calls(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            names.add(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
    return names


def test_no_other_cli_module_opens_connections() -> None:
    folder = Path(quotagate.cli.__file__).parent
    opening = {
        path.name: sorted(_calls(path) & OPENERS)
        for path in sorted(folder.glob("*.py"))
        if path.name not in ("backends.py", *PROBES) and _calls(path) & OPENERS
    }
    assert opening == {}
    assert _calls(folder / "backends.py") & OPENERS >= {"open_engine", "open_ledger", "KeyStore"}
