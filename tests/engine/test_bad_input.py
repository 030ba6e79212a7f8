"""Bad input raises its typed error and leaves Redis unchanged: no key, no outbox entry."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from tests.conftest import EngineFactory
from tests.engine.configs import PLAIN
from tests.engine.snapshot import keyspace

from quotagate import errors
from quotagate.engine import CreditEngine

Op = Callable[[CreditEngine], Awaitable[Any]]


def bound(call: Callable[[CreditEngine, Any], Awaitable[Any]], value: Any) -> Op:
    """The operation ``call(engine, value)``, with ``value`` fixed now (not at call time)."""
    return lambda engine: call(engine, value)


BAD_ACCOUNT_IDS = [
    "",
    "a" * 129,
    "trailing\n",
    "has space",
    "slash/id",
    "brace{1}",
    "ünï",
    "tab\t",
    "new\nline",
]
BAD_AMOUNTS: list[Any] = [0, -1, 1.5, 2.0, "5", True, None, 10**12 + 1, [1], {"n": 1}]
HOLD = "01a20f3c-0000-7000-8000-000000000000"


def _cases() -> list[tuple[str, Op, type[errors.QuotagateError]]]:
    cases: list[tuple[str, Op, type[errors.QuotagateError]]] = []
    # fmt: off
    for bad in BAD_ACCOUNT_IDS:
        cases += [
            (f"consume id {bad!r}", bound(lambda e, b: e.consume(b, "unit"), bad), errors.InvalidAccountId),
            (f"credit id {bad!r}", bound(lambda e, b: e.credit(b, 5), bad), errors.InvalidAccountId),
            (f"upsert id {bad!r}", bound(lambda e, b: e.upsert_account(b), bad), errors.InvalidAccountId),
        ]
    for bad in BAD_AMOUNTS:
        cases += [
            (f"units {bad!r}", bound(lambda e, b: e.consume("acct", "unit", b), bad), errors.InvalidAmount),
            (f"credit {bad!r}", bound(lambda e, b: e.credit("acct", b), bad), errors.InvalidAmount),
            (
                f"hold {bad!r}",
                bound(lambda e, b: e.hold("acct", amount=b), bad),
                errors.InvalidAmount if bad is not None else errors.ValidationError,
            ),
            (f"check {bad!r}", bound(lambda e, b: e.check("acct", "unit", b), bad), errors.InvalidAmount),
            (
                f"capture {bad!r}",
                bound(lambda e, b: e.capture("acct", HOLD, b), bad),
                errors.InvalidAmount if bad is not None else errors.HoldNotFound,
            ),
        ]
    return [
        *cases,
        ("unknown resource", lambda e: e.consume("acct", "nope"), errors.UnknownResource),
        ("resource not str", lambda e: e.consume("acct", 5), errors.UnknownResource),  # type: ignore[arg-type]
        ("cost above 10^12", lambda e: e.consume("acct", "premium_feature", 10**12), errors.InvalidAmount),
        ("unknown account consume", lambda e: e.consume("ghost", "unit"), errors.AccountNotFound),
        ("unknown account credit", lambda e: e.credit("ghost", 5), errors.AccountNotFound),
        ("unknown account hold", lambda e: e.hold("ghost", amount=1), errors.AccountNotFound),
        ("unknown account check", lambda e: e.check("ghost", "unit"), errors.AccountNotFound),
        ("unknown account release", lambda e: e.release("ghost", HOLD), errors.AccountNotFound),
        ("unknown hold capture", lambda e: e.capture("acct", HOLD), errors.HoldNotFound),
        ("unknown hold release", lambda e: e.release("acct", HOLD), errors.HoldNotFound),
        ("malformed hold id", lambda e: e.capture("acct", "not-a-uuid"), errors.ValidationError),
        ("credit type", lambda e: e.credit("acct", 5, "spend"), errors.ValidationError),
        ("adjust zero", lambda e: e.credit("acct", 0, "adjust"), errors.InvalidAmount),
        ("unknown tier", lambda e: e.upsert_account("acct", tier="gold"), errors.UnknownTier),
        ("bad status", lambda e: e.upsert_account("acct", status="zombie"), errors.ValidationError),
        ("negative overdraft", lambda e: e.upsert_account("acct", overdraft_limit=-1), errors.InvalidAmount),
        ("hold ttl 0", lambda e: e.hold("acct", amount=1, ttl_seconds=0), errors.ValidationError),
        ("hold ttl huge", lambda e: e.hold("acct", amount=1, ttl_seconds=10**9), errors.ValidationError),
        ("hold both", lambda e: e.hold("acct", resource="unit", amount=1), errors.ValidationError),
        ("hold neither", lambda e: e.hold("acct"), errors.ValidationError),
        ("idempotency key space", lambda e: e.consume("acct", "unit", idempotency_key="a b"), errors.ValidationError),
        ("idempotency key long", lambda e: e.consume("acct", "unit", idempotency_key="k" * 256), errors.ValidationError),
        ("description long", lambda e: e.consume("acct", "unit", description="d" * 1001), errors.ValidationError),
        ("metadata list", lambda e: e.consume("acct", "unit", metadata=[1]), errors.ValidationError),  # type: ignore[arg-type]
        ("metadata big", lambda e: e.consume("acct", "unit", metadata={"x": "y" * 5000}), errors.ValidationError),
        *_unstorable_text_cases(),
        ("insufficient", lambda e: e.consume("acct", "unit", 1000), errors.InsufficientCredits),
        ("insufficient hold", lambda e: e.hold("acct", amount=1000), errors.InsufficientCredits),
    ]
    # fmt: on


def _deep(levels: int) -> dict[str, Any]:
    """A dict ``levels`` levels deep (the top one included), built without recursion."""
    top: dict[str, Any] = {}
    node = top
    for _ in range(levels - 1):
        node["a"] = {}
        node = node["a"]
    return top


def _unstorable_text_cases() -> list[tuple[str, Op, type[errors.QuotagateError]]]:
    """Text PostgreSQL cannot store (NUL, lone surrogates), at every place a caller puts
    text, and metadata too deep or not JSON: all refused before the script runs."""
    bad_metadata: list[tuple[str, Any]] = [
        ("NUL value", {"k": "a\x00"}),
        ("NUL key", {"k\x00": 1}),
        ("NUL deep", {"a": [1, {"b": ("x", "\x00")}]}),
        ("surrogate value", {"k": "\ud800"}),
        ("surrogate key", {"\udfff": 1}),
        ("33 levels", _deep(33)),
        ("7000 levels", _deep(7000)),
        ("a list 7000 levels", {"a": _deep_list(7000)}),
        ("wide", {str(i): i for i in range(5000)}),
        ("int key", {1: "x"}),
        ("set value", {"k": {1, 2}}),
    ]
    cases: list[tuple[str, Op, type[errors.QuotagateError]]] = []
    for label, meta in bad_metadata:
        cases += [
            (
                f"consume metadata {label}",
                bound(lambda e, m: e.consume("acct", "unit", metadata=m), meta),
                errors.ValidationError,
            ),
            (
                f"credit metadata {label}",
                bound(lambda e, m: e.credit("acct", 5, metadata=m), meta),
                errors.ValidationError,
            ),
            (
                f"capture metadata {label}",
                bound(lambda e, m: e.capture("acct", HOLD, metadata=m), meta),
                errors.ValidationError,
            ),
        ]
    for label, text in [("NUL", "top-up\x00"), ("surrogate", "\udc00x")]:
        cases += [
            (
                f"consume description {label}",
                bound(lambda e, t: e.consume("acct", "unit", description=t), text),
                errors.ValidationError,
            ),
            (
                f"credit description {label}",
                bound(lambda e, t: e.credit("acct", 5, description=t), text),
                errors.ValidationError,
            ),
            (
                f"capture description {label}",
                bound(lambda e, t: e.capture("acct", HOLD, description=t), text),
                errors.ValidationError,
            ),
            (
                f"idempotency key {label}",
                bound(lambda e, t: e.credit("acct", 5, idempotency_key=t), text),
                errors.ValidationError,
            ),
            (
                f"resource {label}",
                bound(lambda e, t: e.consume("acct", t), text),
                errors.UnknownResource,
            ),
        ]
    return cases  # fmt: skip


def _deep_list(levels: int) -> list[Any]:
    top: list[Any] = []
    node = top
    for _ in range(levels - 1):
        node.append([])
        node = node[0]
    return top


CASES = _cases()
DECIDED_BY_A_SCRIPT = (errors.AccountNotFound, errors.HoldNotFound, errors.InsufficientCredits)
"""Refusals that need what Redis holds (the account, the hold, the balance); every other case
is refused before any Redis call."""
SCRIPT_CASES = [case for case in CASES if case[2] in DECIDED_BY_A_SCRIPT]
EARLY_CASES = [case for case in CASES if case[2] not in DECIDED_BY_A_SCRIPT]


@pytest.fixture
async def seeded(make_engine: EngineFactory) -> CreditEngine:
    engine = await make_engine(PLAIN)
    await engine.upsert_account("acct")
    await engine.credit("acct", 50)
    return engine


# A cluster changes nothing before the first Redis call: these run on the standalone Redis.
@pytest.mark.backend_neutral
@pytest.mark.parametrize(("name", "op", "error"), EARLY_CASES, ids=[c[0] for c in EARLY_CASES])
async def test_bad_input_raises_and_writes_nothing(
    seeded: CreditEngine,
    redis_url: str,
    key_prefix: str,
    name: str,
    op: Op,
    error: type[errors.QuotagateError],
) -> None:
    await _raises_and_writes_nothing(seeded, redis_url, key_prefix, op, error)


@pytest.mark.parametrize(("name", "op", "error"), SCRIPT_CASES, ids=[c[0] for c in SCRIPT_CASES])
async def test_a_script_refusal_raises_and_writes_nothing(
    seeded: CreditEngine,
    redis_url: str,
    key_prefix: str,
    name: str,
    op: Op,
    error: type[errors.QuotagateError],
) -> None:
    await _raises_and_writes_nothing(seeded, redis_url, key_prefix, op, error)


async def _raises_and_writes_nothing(
    engine: CreditEngine,
    redis_url: str,
    key_prefix: str,
    op: Op,
    error: type[errors.QuotagateError],
) -> None:
    before = keyspace(redis_url, key_prefix)
    with pytest.raises(error):
        await op(engine)
    assert keyspace(redis_url, key_prefix) == before


async def test_capture_above_the_hold_writes_nothing(
    seeded: CreditEngine, redis_url: str, key_prefix: str
) -> None:
    hold = await seeded.hold("acct", amount=10)
    before = keyspace(redis_url, key_prefix)
    with pytest.raises(errors.CaptureExceedsHold):
        await seeded.capture("acct", hold.hold_id, 11)
    assert keyspace(redis_url, key_prefix) == before
    assert (await seeded.capture("acct", hold.hold_id, 10)).cost == 10


async def test_balance_past_the_bound_is_refused_and_writes_nothing(
    seeded: CreditEngine, redis_url: str, key_prefix: str
) -> None:
    # 10^15 is the largest balance: reach it exactly, then one more credit is refused.
    import asyncio

    await asyncio.gather(*(seeded.credit("acct", 10**12) for _ in range(999)))
    state = await seeded.get_account("acct")
    await seeded.credit("acct", 10**15 - state.balance)
    assert (await seeded.get_account("acct")).balance == 10**15
    before = keyspace(redis_url, key_prefix)
    with pytest.raises(errors.BalanceLimitExceeded):
        await seeded.credit("acct", 1)
    assert keyspace(redis_url, key_prefix) == before
    # the balance stays exact at the bound: spending 1 leaves 10^15 - 1
    assert (await seeded.consume("acct", "unit")).balance == 10**15 - 1


# The scripts check their own arguments too (they are the last line): call them raw.
RAW_BAD: list[tuple[str, list[str]]] = [
    ("consume", ["t1", "acct", "0", "unit", "1", "", "", "", "", "1000"]),
    ("consume", ["t1", "acct", "1.5", "unit", "1", "", "", "", "", "1000"]),
    ("consume", ["t1", "acct", "1e3", "unit", "1", "", "", "", "", "1000"]),
    ("consume", ["t1", "acct", "1", "unit", "-1", "", "", "", "", "1000"]),
    ("consume", ["", "acct", "1", "unit", "1", "", "", "", "", "1000"]),
    ("consume", ["t1", "acct", "1", "unit", "1", "", "", "", "", "x"]),
    # Only a number's canonical text: consume stores the cost and units as given.
    ("consume", ["t1", "acct", "01", "unit", "1", "", "", "", "", "1000"]),
    ("consume", ["t1", "acct", "1", "unit", "007", "", "", "", "", "1000"]),
    ("consume", ["t1", "acct", "-0", "unit", "1", "", "", "", "", "1000"]),
    ("consume", ["t1", "acct", "+1", "unit", "1", "", "", "", "", "1000"]),
    ("credit", ["t1", "acct", "05", "grant", "", "", "", "", "1000", "1000000000000000"]),
    ("check", ["0"]),
    ("check", [" 1"]),
    ("credit", ["t1", "acct", "0", "grant", "", "", "", "", "1000", "1000000000000000"]),
    ("credit", ["t1", "acct", "-5", "grant", "", "", "", "", "1000", "1000000000000000"]),
    ("credit", ["t1", "acct", "5", "spend", "", "", "", "", "1000", "1000000000000000"]),
    ("credit", ["t1", "acct", "1000000000001", "earn", "", "", "", "", "1000", "1000000000000000"]),
    ("hold", ["h1", "acct", "0", "1000", "", "1", "", "", "1000", "", "", ""]),
    ("hold", ["h1", "acct", "5", "0", "", "1", "", "", "1000", "", "", ""]),
    ("hold", ["h|1", "acct", "5", "1000", "", "1", "", "", "1000", "", "", ""]),
    ("hold", ["h1", "acct", "5", "1000", "", "1", "", "", "1000", "-1", "release", "0"]),
    ("hold", ["h1", "acct", "5", "1000", "", "1", "", "", "1000", "0", "keep", "0"]),
    ("hold", ["h1", "acct", "5", "1000", "", "1", "", "", "1000", "0", "release", "x"]),
    ("settle", ["t1", "acct", HOLD, "-1", "", "", "", "1000", "1000"]),
    ("settle", ["t1", "acct", HOLD, "", "1.5", "", "", "1000", "1000"]),
    ("settle", ["t1", "acct", HOLD, "5", "", "", "", "1000", "0"]),
    ("capture", ["t1", "acct", HOLD, "0", "", "", "", "", "1000"]),
    ("release", ["acct", HOLD, "", "", "0"]),
    (
        "upsert_account",
        ["acct", "", "zombie", "", "e1", "0", "g1", "2026-11", "", "", "1000", "free"],
    ),
    ("upsert_account", ["acct", "", "", "-1", "e1", "0", "g1", "2026-11", "", "", "1000", "free"]),
    ("upsert_account", ["acct", "", "", "", "e1", "0", "g1", "Nov", "", "", "1000", "free"]),
    ("renew", ["acct", "Nov", "x1", "g1"]),
    ("renew", ["acct", "2026-11", "", "g1"]),
    ("restore", ["acct", "free", "active", "0", "1.5", "0", "", "", "0", "0"]),
]

LONG_ID = "t" * 65
"""One character past the bound every script puts on an id (transaction, hold, event, spend)."""

RAW_LONG_IDS: list[tuple[str, list[str], str]] = [
    ("consume", [LONG_ID, "acct", "1", "unit", "1", "", "", "", "", "1000"], "transaction_id"),
    ("credit", [LONG_ID, "acct", "5", "grant", "", "", "", "", "1000", "1000000000000000", "",
                "", "", "1000"], "transaction_id"),
    ("credit", ["t1", "acct", "5", "refund", "", "", "", "", "1000", "1000000000000000",
                LONG_ID, "5", "0", "1000"], "refund_of"),
    ("hold", [LONG_ID, "acct", "5", "1000", "", "1", "", "", "1000", "", "", ""], "hold_id"),
    ("settle", [LONG_ID, "acct", HOLD, "5", "", "", "", "1000", "1000"], "transaction_id"),
    ("settle", ["t1", "acct", LONG_ID, "5", "", "", "", "1000", "1000"], "hold_id"),
    ("capture", [LONG_ID, "acct", HOLD, "", "", "", "", "", "1000"], "transaction_id"),
    ("capture", ["t1", "acct", LONG_ID, "", "", "", "", "", "1000"], "hold_id"),
    ("release", ["acct", LONG_ID, "", "", "1000"], "hold_id"),
    ("upsert_account", ["acct", "", "", "", LONG_ID, "0", "g1", "2026-11", "", "", "1000",
                        "free"], "transaction_id"),
    ("upsert_account", ["acct", "", "", "", "e1", "0", LONG_ID, "2026-11", "", "", "1000",
                        "free"], "transaction_id"),
    ("renew", ["acct", "2026-11", LONG_ID, "g1", "e1"], "transaction_id"),
    ("renew", ["acct", "2026-11", "x1", LONG_ID, "e1"], "transaction_id"),
    ("renew", ["acct", "2026-11", "x1", "g1", LONG_ID], "transaction_id"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("script", "args", "name"),
    RAW_LONG_IDS,
    ids=[f"{s}-{i}" for i, (s, _, _) in enumerate(RAW_LONG_IDS)],
)
async def test_every_script_bounds_every_id_the_same_way(
    seeded: CreditEngine,
    redis_url: str,
    key_prefix: str,
    script: str,
    args: list[str],
    name: str,
) -> None:
    before = keyspace(redis_url, key_prefix)
    keys = [*seeded.keys.account("acct", "idem").as_list(), seeded.keys.refund_count("acct", "x")]
    reply = await seeded.runner.run(seeded.scripts[script], keys, args)
    assert reply == ["err", "invalid_argument", name]
    assert keyspace(redis_url, key_prefix) == before
    # One character fewer is an id like any other: the same call gets past the id check.
    shorter = [LONG_ID[:64] if a == LONG_ID else a for a in args]
    reply = await seeded.runner.run(seeded.scripts[script], keys, shorter)
    assert reply[:3] != ["err", "invalid_argument", name]


@pytest.mark.parametrize(
    ("script", "args"), RAW_BAD, ids=[f"{s}-{i}" for i, (s, _) in enumerate(RAW_BAD)]
)
async def test_scripts_refuse_bad_arguments_before_writing(
    seeded: CreditEngine, redis_url: str, key_prefix: str, script: str, args: list[str]
) -> None:
    before = keyspace(redis_url, key_prefix)
    keys = seeded.keys.account("acct", "idem").as_list()
    reply = await seeded.runner.run(seeded.scripts[script], keys, args)
    assert reply[:2] == ["err", "invalid_argument"]
    assert keyspace(redis_url, key_prefix) == before
