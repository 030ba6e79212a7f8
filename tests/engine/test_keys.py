"""engine/keys.py names every key: its table matches what Redis holds after every kind of write,
and no other module builds a key name from the prefix."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import EngineFactory
from tests.engine.configs import PLAIN

from quotagate.auth.cache import publish_snapshot
from quotagate.engine import CreditEngine, KeySpace, keys
from quotagate.engine.results import RefundCount
from quotagate.jobs.renew import renew_partition_async
from quotagate.ledger.lease import FlushLease

SRC = Path(keys.__file__).resolve().parents[1]

_NAME_LINE = re.compile(r"^ {4}(P:[^\s,]+(?:, P:[^\s,]+)*)")


def table_names() -> list[str]:
    """Every key name the opening table of engine/keys.py lists, as written there."""
    names: list[str] = []
    for line in (keys.__doc__ or "").splitlines():
        found = _NAME_LINE.match(line)
        if found:
            names.extend(found.group(1).split(", "))
    return names


def table_patterns(prefix: str) -> list[re.Pattern[str]]:
    """The table's names as patterns of real keys under ``prefix``."""
    patterns = []
    for name in table_names():
        text = re.escape(prefix) + re.escape(name[1:])
        text = text.replace(re.escape("{n}"), r"\{\d+\}").replace(re.escape("<n>"), r"\d+")
        text = re.sub(r"<[a-z]+>", ".+", text)
        patterns.append(re.compile(text + "$"))
    return patterns


def test_the_table_lists_the_names_every_writer_uses() -> None:
    names = table_names()
    assert "P:{n}:flushlease" in names
    assert "P:flushq:<n>" in names and "P:flushfail:<n>" in names
    assert {"P:flush", "P:jobs", "P:expire-holds", "P:renewal", "P:reconciliation"} <= set(names)
    patterns = table_patterns("qg")
    space = KeySpace("qg", 8)
    built = [
        space.meta, space.api_keys, space.cfg(3), space.outbox(3), space.renewed(3),
        space.accounts(3), space.partition_hold_expiry(3), space.flush_lease(3),
        space.refund_count("acct:1", "txn-1"), *space.script_keys("acct:1", "idem"),
        keys.queue_name("qg", "flush"), keys.queue_name("qg", "jobs"),
        keys.flush_queued_flag("qg", 3), keys.flush_failures("qg", 3),
        *(keys.cron_job_name("qg", job) for job in ("flush", "expire-holds", "renewal",
                                                    "reconciliation")),
    ]  # fmt: skip
    unnamed = [key for key in built if not any(p.match(key) for p in patterns)]
    assert unnamed == []


def test_the_account_keys_are_one_list_in_two_shapes() -> None:
    space = KeySpace("qg", 8)
    for idem in (None, "req-1"):
        named = space.account("acct:1", idem)
        assert tuple(named.as_list()) == space.script_keys("acct:1", idem)
        assert named.idempotency.endswith(":ik:6:acct:1:" + (idem or ""))


async def test_every_key_in_redis_is_in_the_table(
    make_engine: EngineFactory, key_prefix: str
) -> None:
    engine = await make_engine(PLAIN)
    await _write_every_kind(engine)
    written = [key async for key in engine.redis.scan_iter(match=f"{key_prefix}:*", count=1000)]
    patterns = table_patterns(key_prefix)
    unnamed = [key for key in written if not any(p.match(key) for p in patterns)]
    assert unnamed == []
    kinds = {p.pattern for p in patterns for key in written if p.match(key)}
    assert len(kinds) == 14  # every credit-Redis row of the table was written at least once


async def _write_every_kind(engine: CreditEngine) -> None:
    """Every kind of key the credit Redis holds: accounts, holds, rate state, records, refund
    counts, the renewal marker, a flush lease and the API key copy."""
    await engine.upsert_account("a:1", tier="limited")
    await engine.credit("a:1", 50, description="top-up")
    spend = await engine.consume("a:1", "unit", idempotency_key="req-1")
    await engine.hold("a:1", amount=5)
    await engine.credit(
        "a:1", 1, "refund", refund_of=spend.transaction_id, counted=RefundCount(1, 0)
    )
    await renew_partition_async(engine, engine.keys.partition_of("a:1"), "2099-01")
    lease = await FlushLease.acquire(engine, 0, 30)
    assert lease is not None
    await publish_snapshot(engine.redis, engine.keys.prefix, [])


_BUILT_FROM_PREFIX = re.compile(r"""f["'][^"']*\{[^}]*(prefix|\.tag\()[^}]*\}:""")


def test_no_module_but_keys_builds_a_key_name() -> None:
    built = [
        f"{path.relative_to(SRC)}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        if path != Path(keys.__file__).resolve()
        for line in path.read_text().splitlines()
        if _BUILT_FROM_PREFIX.search(line)
    ]
    assert built == []
    # The check itself sees a key built the way keys.py builds them.
    assert _BUILT_FROM_PREFIX.search('name = f"{self.prefix}:meta"')
    assert _BUILT_FROM_PREFIX.search('return f"{engine.keys.tag(partition)}:flushlease"')
