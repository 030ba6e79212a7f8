"""Idempotency inside the scripts: a replay returns the first answer and charges once."""

from __future__ import annotations

from typing import cast

import pytest
from tests.conftest import EngineFactory
from tests.engine.configs import PLAIN
from tests.support.servers import RedisProcess

from quotagate.engine import CreditEngine, idempotency
from quotagate.errors import IdempotencyConflict
from quotagate.ledger.outbox import RawEntries


async def _check_replays(engine: CreditEngine, flush_scripts: bool) -> None:
    await engine.upsert_account("acct")
    await engine.credit("acct", 100)

    first = await engine.consume("acct", "unit", 3, idempotency_key="req-1", metadata={"k": 1})
    grant = await engine.credit("acct", 7, "earn", idempotency_key="grant-1")
    hold = await engine.hold("acct", amount=10, idempotency_key="hold-1")
    if flush_scripts:
        await engine.redis.function_flush()

    again = await engine.consume("acct", "unit", 3, idempotency_key="req-1", metadata={"k": 1})
    assert again.transaction_id == first.transaction_id
    assert (again.cost, again.remaining, again.replayed) == (3, first.remaining, True)
    grant_again = await engine.credit("acct", 7, "earn", idempotency_key="grant-1")
    assert (grant_again.transaction_id, grant_again.replayed) == (grant.transaction_id, True)
    hold_again = await engine.hold("acct", amount=10, idempotency_key="hold-1")
    assert (hold_again.hold_id, hold_again.replayed) == (hold.hold_id, True)

    state = await engine.get_account("acct")
    assert state.balance == 100 - 3 + 7
    assert state.reserved == 10
    stream = engine.keys.outbox(engine.keys.partition_of("acct"))
    entries = cast(RawEntries, await engine.redis.xrange(stream))
    ids = [f["id"] for _, f in entries if f["t"] != "account"]
    assert ids.count(first.transaction_id) == 1
    assert ids.count(grant.transaction_id) == 1

    if flush_scripts:
        await engine.redis.function_flush()
    for conflicting in (
        engine.consume("acct", "unit", 4, idempotency_key="req-1", metadata={"k": 1}),
        engine.consume("acct", "unit", 3, idempotency_key="req-1", metadata={"k": 2}),
        engine.credit("acct", 8, "earn", idempotency_key="grant-1"),
        engine.hold("acct", amount=11, idempotency_key="hold-1"),
    ):
        with pytest.raises(IdempotencyConflict):
            await conflicting
    assert (await engine.get_account("acct")).balance == 104


async def test_replay_returns_first_answer_and_charges_once(make_engine: EngineFactory) -> None:
    await _check_replays(await make_engine(PLAIN), flush_scripts=False)


# On a redis-server of its own, never the suite's Redis: a cluster variant would be the same.
@pytest.mark.backend_neutral
@pytest.mark.parametrize("batching", [True, False])
async def test_replay_and_conflict_survive_function_flush(
    make_engine: EngineFactory, private_redis: RedisProcess, batching: bool
) -> None:
    engine = await make_engine(PLAIN, url=private_redis.url, batching=batching)
    await _check_replays(engine, flush_scripts=True)


async def test_keys_are_scoped_per_account(make_engine: EngineFactory) -> None:
    engine = await make_engine(PLAIN)
    for account in ("a", "b"):
        await engine.upsert_account(account)
        await engine.credit(account, 10)
    first = await engine.consume("a", "unit", idempotency_key="same")
    other = await engine.consume("b", "unit", idempotency_key="same")
    assert first.transaction_id != other.transaction_id
    assert not other.replayed


async def test_refusals_are_not_remembered(make_engine: EngineFactory) -> None:
    engine = await make_engine(PLAIN)
    await engine.upsert_account("acct")
    from quotagate.errors import InsufficientCredits

    with pytest.raises(InsufficientCredits):
        await engine.consume("acct", "unit", 5, idempotency_key="retry-me")
    await engine.credit("acct", 5)
    result = await engine.consume("acct", "unit", 5, idempotency_key="retry-me")
    assert not result.replayed and result.remaining == 0


async def test_idempotency_records_expire(make_engine: EngineFactory) -> None:
    engine = await make_engine(
        PLAIN.replace(
            "opening_grant = false", "opening_grant = false\n[idempotency]\nttl_seconds = 60"
        )
    )
    await engine.upsert_account("acct")
    await engine.credit("acct", 5)
    await engine.consume("acct", "unit", idempotency_key="k")
    ttl = await engine.redis.pttl(engine.keys.account("acct", "k").idempotency)
    assert 55_000 < ttl <= 60_000


async def test_records_of_accounts_whose_ids_hold_colons_never_meet(
    make_engine: EngineFactory,
) -> None:
    """Account ``X`` with key ``Y:K`` and account ``X:Y`` with key ``K`` are two requests:
    neither replays the other's answer, and both are charged (or granted)."""
    engine = await make_engine(PLAIN)
    # Records live per partition: the two accounts must share one for their names to meet.
    x = next(f"u{i}" for i in range(10_000) if _same_partition(engine, f"u{i}", f"u{i}:Y"))
    xy = f"{x}:Y"
    for account in (x, xy):
        await engine.upsert_account(account)
        await engine.credit(account, 10)

    first = await engine.consume(xy, "unit", idempotency_key="K")
    other = await engine.consume(x, "unit", idempotency_key="Y:K")
    assert other.transaction_id != first.transaction_id
    assert (other.replayed, other.balance) == (False, 9)
    granted = await engine.credit(xy, 5, "earn", idempotency_key="G")
    swallowed = await engine.credit(x, 5, "earn", idempotency_key="Y:G")
    assert swallowed.transaction_id != granted.transaction_id
    assert (swallowed.replayed, swallowed.balance) == (False, 14)

    assert (await engine.get_account(x)).balance == 14
    assert (await engine.get_account(xy)).balance == 14


def _same_partition(engine: CreditEngine, a: str, b: str) -> bool:
    return engine.keys.partition_of(a) == engine.keys.partition_of(b)


async def test_account_ids_are_read_back_under_a_prefix_holding_a_colon_a_colon(
    make_engine: EngineFactory, key_prefix: str, redis_url: str
) -> None:
    """A prefix such as ``tenant:a:x`` must not be mistaken for the account part of a key."""
    from quotagate.config import parse_config
    from quotagate.jobs.scan import account_batches_by_scan

    engine = CreditEngine.from_url(redis_url, parse_config(PLAIN), prefix=f"{key_prefix}:a:x")
    try:
        await engine.initialize()
        await engine.upsert_account("bob:a:c")
        p = engine.keys.partition_of("bob:a:c")
        found = [a async for batch in account_batches_by_scan(engine, p) for a in batch]
        assert found == ["bob:a:c"]
        with pytest.raises(ValueError):
            engine.keys.account_id_from_key(f"{key_prefix}:meta")
    finally:
        await engine.aclose()


async def test_records_hold_the_fingerprint_and_only_what_a_replay_answers(
    make_engine: EngineFactory,
) -> None:
    """A record is the 16-character fingerprint and the reply's fields, nothing else: every
    byte of it is kept in Redis per request for the whole window."""
    engine = await make_engine(PLAIN)
    await engine.upsert_account("acct")
    await engine.credit("acct", 100)
    charge = await engine.consume("acct", "unit", 3, idempotency_key="c", description="d")
    grant = await engine.credit("acct", 7, "earn", idempotency_key="g")

    record = await engine.redis.get(engine.keys.account("acct", "c").idempotency)
    fp = idempotency.consume_fingerprint("unit", 3, "d", "")
    assert record == f"{fp}{charge.transaction_id} 3 97 97"
    assert record == idempotency.consume_record(fp, charge.transaction_id, 3, 97, 97)
    record = await engine.redis.get(engine.keys.account("acct", "g").idempotency)
    fp = idempotency.credit_fingerprint(7, "earn", "", "", "")
    assert record == f"{fp}{grant.transaction_id} 104 104 {grant.outbox_entry_id}"
    assert len(fp) == 16


CLUSTER_KEY_OVERHEAD_BYTES = 16
"""What Redis in cluster mode adds to each key: it links every key into its slot's list."""


async def test_a_hook_record_takes_at_most_200_bytes(
    make_engine: EngineFactory, redis_backend: str
) -> None:
    """MEMORY USAGE of a hook-like record (32-hex request id, as nginx's $request_id): at most
    200 bytes under this test's 16-character prefix (it was 248 with the JSON reply), and the
    per-key links of a cluster node on top."""
    engine = await make_engine(PLAIN)
    await engine.upsert_account("user-000123")
    await engine.credit("user-000123", 1000)
    request_id = "9f8a693cf5b54f8c87751013aa0e66e6"
    await engine.consume("user-000123", "unit", idempotency_key=request_id)
    key = engine.keys.account("user-000123", request_id).idempotency
    limit = 200 + (CLUSTER_KEY_OVERHEAD_BYTES if redis_backend == "cluster" else 0)
    usage = await engine.redis.memory_usage(key, samples=0)
    assert usage is not None and usage <= limit


async def test_hook_charges_keep_their_own_short_window_and_namespace(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(
        PLAIN.replace(
            "opening_grant = false",
            "opening_grant = false\n[idempotency]\nttl_seconds = 3600\nhook_ttl_seconds = 120",
        )
    )
    await engine.upsert_account("acct")
    await engine.credit("acct", 10)

    hooked = await engine.consume_soon(
        "acct", "unit", idempotency_key="r", idempotency_scope="hook"
    )
    again = await engine.consume_soon("acct", "unit", idempotency_key="r", idempotency_scope="hook")
    assert (again.transaction_id, again.replayed) == (hooked.transaction_id, True)
    hook_key = engine.keys.account("acct", "hook r").idempotency
    assert 115_000 < await engine.redis.pttl(hook_key) <= 120_000

    # The same key from the API is another request, remembered for the API's window.
    api = await engine.consume("acct", "unit", idempotency_key="r")
    assert (api.replayed, api.balance) == (False, 8)
    assert (
        3_595_000
        < await engine.redis.pttl(engine.keys.account("acct", "r").idempotency)
        <= 3_600_000
    )

    stream = engine.keys.outbox(engine.keys.partition_of("acct"))
    entries = cast(RawEntries, await engine.redis.xrange(stream))
    keys = [f["ik"] for _, f in entries if f["t"] == "spend"]
    assert keys == ["hook r", "r"]
