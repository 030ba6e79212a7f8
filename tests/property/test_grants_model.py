"""Random sequences of grant, void, spend, hold, reserve, settle, refund and credit operations
(some keyed and sent again), run against the real scripts (CreditEngine on real Redis) and
against the reference model (tests/property/model.py): both must give the same answers, leave
the same account (monthly, purchased, reserved, the `g` field byte for byte, the holds) and
write the same outbox rows, expire rows included.

Each sequence comes from ``random.Random(seed)``: a failure names its seed and its last
steps, and the same seed draws the same operations again (ids and times differ, and with
them what expired when). The suite runs a short form (25 seeds of 40 steps). For a long run
(QUOTAGATE_PROPERTY_SEEDS seeds, 0 to N-1, of QUOTAGATE_PROPERTY_STEPS steps)::

    QUOTAGATE_PROPERTY_SEEDS=500 QUOTAGATE_PROPERTY_STEPS=200 pytest tests/property

and one seed alone: ``pytest 'tests/property/test_grants_model.py::test_scripts_follow_the_model[7]'``.

Time. Redis TIME cannot be faked, so grants expire tens to hundreds of ms ahead and short
real sleeps let time pass. The server's time is read just before and just after each
operation; a grant whose expiry falls inside that window may or may not be expired by the
operation, and the outbox says which: the model then runs at the instant that explains it.
A grant must have expired if its expiry is at or before the time read before, and must not
have if it is after the time read after; everything else the model decides alone.
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from tests.conftest import EngineFactory
from tests.property.model import (
    MONTHLY,
    PURCHASED,
    STANDING_PRIORITY,
    AccountModel,
    Answer,
    ModelGrant,
    Outcome,
    Row,
    Spend,
)

from quotagate import ids
from quotagate.engine import CreditEngine
from quotagate.engine.charge_list import Charge
from quotagate.engine.results import GRANT_SOURCES, Account, RefundCount
from quotagate.errors import (
    AdjustBelowFloor,
    CaptureExceedsHold,
    GrantNotFound,
    HoldNotFound,
    HoldSettled,
    IdempotencyConflict,
    InsufficientCredits,
    QuotagateError,
    RefundExceedsSpend,
    TooManyGrants,
    ValidationError,
)
from quotagate.ledger.outbox import RawEntries

SEEDS = int(os.environ.get("QUOTAGATE_PROPERTY_SEEDS", "25"))
STEPS = int(os.environ.get("QUOTAGATE_PROPERTY_STEPS", "40"))

CONFIG = """
opening_grant = false
[resources]
unit = 1
[tiers.free]
credit_limit = 100000
monthly_grant = 80
[tiers.pro]
credit_limit = 100000
monthly_grant = 80
renewal = "reset"
"""
"""`free` renews by adding (its monthly grant never expires), `pro` by reset (its monthly
grant expires at its period's end, which places it in the spend order)."""

MONTHLY_GRANT = 80
"""Both tiers' monthly grant (in CONFIG)."""

ACCOUNT = "acct"
HOLD_TTL_SECONDS = 600
"""Holds outlive every sequence: their own expiry is the hold tests' subject."""

ROW_FIELDS = ("dm", "hold", "gd", "gr", "gx", "gp", "gs", "rf")
"""The outbox fields the model predicts besides type, amount and balance."""

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def _at(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def _period_end_ms(period: str) -> int:
    year, month = (int(part) for part in period.split("-"))
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return _ms(datetime(year, month, 1, tzinfo=UTC))


def _next_period(period: str) -> str:
    year, month = (int(part) for part in period.split("-"))
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return f"{year:04d}-{month:02d}"


def _refusal(exc: QuotagateError) -> Answer:
    """The error an exception stands for, with the arguments the script gave."""
    if isinstance(exc, InsufficientCredits):
        return Answer(error="insufficient_credits", error_args=(exc.required, exc.available))
    if isinstance(exc, CaptureExceedsHold):
        return Answer(error="capture_exceeds_hold", error_args=(exc.extra["held"],))
    if isinstance(exc, RefundExceedsSpend):
        args = (exc.extra["cost"], exc.extra["refunded"])
        return Answer(error="refund_exceeds_spend", error_args=args)
    if isinstance(exc, AdjustBelowFloor):
        return Answer(error="adjust_below_floor", error_args=(exc.extra["available"],))
    if isinstance(exc, GrantNotFound):
        return Answer(error="grant_not_found")
    if isinstance(exc, HoldNotFound):
        return Answer(error="hold_not_found")
    if isinstance(exc, HoldSettled):
        return Answer(error="hold_settled")
    if isinstance(exc, IdempotencyConflict):
        return Answer(error="idempotency_conflict")
    if isinstance(exc, TooManyGrants):
        return Answer(error="too_many_grants")
    if isinstance(exc, ValidationError) and exc.extra.get("field") == "expires_at":
        return Answer(error="invalid_argument")
    raise exc


def _row(fields: dict[str, str]) -> Row:
    """An outbox entry as the model writes rows (an account event has no amount: 0)."""
    extra = tuple((name, fields[name]) for name in ROW_FIELDS if name in fields)
    return Row(fields["t"], int(fields.get("amt", 0)), int(fields.get("bal", 0)), extra)


def _sorted_row(row: Row) -> Row:
    return Row(row.type, row.amount, row.balance, tuple(sorted(row.extra)))


@dataclass
class Observed:
    """What Redis holds right after an operation."""

    now_ms: int
    rows: list[Row]
    stored: tuple[int, int, int, str | None]
    """The account hash's m, b, r and g."""
    holds: list[str]
    index_score: float | None
    """The account's score in the partition's grant-expiry index."""


@dataclass
class Keyed:
    """A call made with an idempotency key, to send again: ``send(key, changed)`` makes it
    (with other arguments when ``changed``), ``values`` reads its answer; ``first`` is what
    it answered first, ``first_id`` the id it made (its ``id_field`` on the result)."""

    send: Callable[[str, bool], Awaitable[Any]]
    values: Callable[[Any], tuple[int, ...]]
    first: Answer
    first_id: str
    id_field: str = "transaction_id"

    def ident(self, result: Any) -> str:
        return str(getattr(result, self.id_field))


class Sequence:
    """One seeded sequence: draws each operation, runs it on both sides, compares."""

    def __init__(self, engine: CreditEngine, seed: int) -> None:
        self.engine = engine
        self.seed = seed
        self.rng = random.Random(seed)
        self.keys = engine.keys.account(ACCOUNT)
        self.partition = engine.keys.partition_of(ACCOUNT)
        self.outbox = engine.keys.outbox(self.partition)
        self.index = engine.keys.grant_expiry(self.partition)
        self.model = AccountModel(overdraft=0)
        self.grant_ids: list[str] = []  # every grant ever made, for voids of gone ones
        self.tier, self.period = "free", ""  # chosen by open_account
        self.keyed: dict[str, Keyed] = {}  # idempotency keys whose first call was charged
        self.last_entry = "0-0"
        self.trace: list[str] = []

    # -- setup -----------------------------------------------------------------------------

    async def open_account(self) -> None:
        rng, engine = self.rng, self.engine
        tier = rng.choice(["free", "pro"])
        overdraft = rng.choice([0, 0, 30])
        period = rng.choice(["2020-01", "2099-01"])
        self.tier, self.period = tier, period
        await engine.upsert_account(ACCOUNT, tier=tier, overdraft_limit=overdraft)
        await engine.renew(ACCOUNT, period)
        purchased = rng.randint(0, 60)
        if purchased:
            await engine.credit(ACCOUNT, purchased)
        self.model = AccountModel(
            overdraft=overdraft,
            monthly=MONTHLY_GRANT,
            purchased=purchased,
            monthly_expires_ms=_period_end_ms(period) if tier == "pro" else None,
        )
        self.trace.append(f"open tier={tier} overdraft={overdraft} period={period} b={purchased}")
        seen = await self._observe()  # the setup's rows are not under test
        await self.check_state(seen)

    # -- the comparison of one operation --------------------------------------------------

    async def _server_ms(self) -> int:
        seconds, micros = await self.engine.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def _observe(self) -> Observed:
        """The server's time, the outbox rows since the last look and the account's keys,
        read in one round trip (in this order, after the operation)."""
        redis = self.engine.redis
        async with redis.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.xrange(self.outbox, min=f"({self.last_entry}")
            pipe.hmget(self.keys.account, ["m", "b", "r", "g"])
            pipe.hkeys(self.keys.holds)
            pipe.zscore(self.index, ACCOUNT)
            (seconds, micros), entries, fields, holds, score = await pipe.execute()
        if entries:
            self.last_entry = entries[-1][0]
        m, b, r, g = cast(list[str | None], fields)
        return Observed(
            now_ms=int(seconds) * 1000 + int(micros) // 1000,
            rows=[_row(f) for _, f in cast(RawEntries, entries) if f.get("a") == ACCOUNT],
            stored=(int(m or "0"), int(b or "0"), int(r or "0"), g),
            holds=sorted(holds),
            index_score=score,
        )

    def _fail(self, message: str) -> str:
        recent = "\n  ".join(self.trace[-12:])
        return f"seed {self.seed}, step {len(self.trace) - 1}: {message}\n  {recent}"

    def _instant(self, before: int, after: int, rows: list[Row], floor: int | None) -> int:
        """The instant that explains what the operation expired: the time read before it,
        or later when it expired a grant (or refused a new grant as past) due after that."""
        expiries = {g.id: g.expires_ms for g in self.model.grants}
        instant = before if floor is None else max(before, floor)
        for row in rows:
            gid = dict(row.extra).get("gr")
            if row.type != "expire" or gid is None:  # not a grant's (a renewal's monthly)
                continue
            assert gid in expiries, self._fail(f"expired {gid}, which the model does not hold")
            expiry = expiries[gid]
            assert expiry is not None, self._fail(f"expired {gid}, which never expires")
            assert expiry <= after, self._fail(
                f"expired {gid} due at {expiry}, after the server's time after the call ({after})"
            )
            instant = max(instant, expiry)
        return instant

    async def run(
        self,
        label: str,
        call: Callable[[], Awaitable[list[Answer]]],
        apply: Callable[[AccountModel, int], list[Outcome]],
        *,
        past_expiry: int | None = None,
    ) -> list[Answer]:
        """Runs ``call`` on Redis and ``apply`` on the model at the instant the outbox shows,
        then compares answers, rows and the account."""
        self.trace.append(label)
        before = await self._server_ms()
        answers = await call()
        seen = await self._observe()
        after, rows = seen.now_ms, seen.rows
        refused_as_past = answers[0].error == "invalid_argument"
        floor = past_expiry if refused_as_past else None
        if refused_as_past and past_expiry is not None:
            assert past_expiry <= after, self._fail("a grant due after the call refused as past")
        instant = self._instant(before, after, rows, floor)
        outcomes = apply(self.model, instant)
        expected_answers = [outcome.answer for outcome in outcomes]
        assert answers == expected_answers, self._fail(
            f"answers {answers} != model {expected_answers} (instant {instant}, "
            f"window {before}..{after})"
        )
        expected_rows = [_sorted_row(r) for outcome in outcomes for r in outcome.rows]
        assert [_sorted_row(r) for r in rows] == expected_rows, self._fail(
            f"outbox rows {rows} != model {expected_rows} (instant {instant}, "
            f"window {before}..{after}: a grant due at or before {before} must expire)"
        )
        await self.check_state(seen)
        return answers

    async def _answers(
        self, call: Awaitable[Any], values: Callable[[Any], tuple[int, ...]]
    ) -> tuple[list[Answer], Any]:
        """The answer of a call (its values, or the refusal it raised) and its result."""
        try:
            result = await call
        except QuotagateError as exc:
            return [_refusal(exc)], None
        return [Answer(values=values(result))], result

    # -- what the account must be after each operation -------------------------------------

    async def check_state(self, seen: Observed) -> None:
        model = self.model
        expected = (model.monthly, model.purchased, model.reserved, model.grant_field())
        assert seen.stored == expected, self._fail(
            f"account hash (m, b, r, g) {seen.stored} != {expected}"
        )
        assert seen.holds == sorted(model.holds), self._fail(
            f"holds {seen.holds} != {sorted(model.holds)}"
        )
        next_expiry = model.next_expiry_ms()
        score = seen.index_score
        if next_expiry is not None:
            assert score is not None and score <= next_expiry, self._fail(
                f"grant-expiry index scores the account {score}, its next expiry is "
                f"{next_expiry}: the sweep would miss it"
            )
        await self._check_read(seen.now_ms)

    async def _check_read(self, before: int) -> None:
        """get_account counts a grant past its expiry as gone, expired yet or not: the grants
        due inside the read's window (from ``before``, a time read earlier) may show either
        way, the rest as the model has them."""
        account = await self.engine.get_account(ACCOUNT)
        after = await self._server_ms()
        shown = {g.id for g in account.grants} - {MONTHLY, PURCHASED}
        for grant in self.model.grants:
            due = grant.expires_ms
            if due is not None and due <= before:
                assert grant.id not in shown, self._fail(f"read shows {grant.id}, due at {due}")
            elif due is None or due > after:
                assert grant.id in shown, self._fail(f"read hides {grant.id}, due at {due}")
        assert shown <= {g.id for g in self.model.grants}, self._fail(f"read shows {shown}")
        self._compare_read(account, shown)

    def _compare_read(self, account: Account, shown: set[str]) -> None:
        model = self.model
        expected = []
        for source in model.spend_order():
            if source == MONTHLY:
                expiry = model.monthly_expires_ms
                expected.append(
                    (MONTHLY, "renewal", STANDING_PRIORITY, model.monthly, model.monthly, expiry)
                )
            elif source == PURCHASED:
                purchased = model.purchased
                expected.append(
                    (PURCHASED, "purchase", STANDING_PRIORITY, purchased, purchased, None)
                )
            elif isinstance(source, ModelGrant) and source.id in shown:
                g = source
                expected.append((g.id, g.source, g.priority, g.amount, g.remaining, g.expires_ms))
        read = [
            (g.id, g.source, g.priority, g.amount, g.remaining,
             _ms(g.expires_at) if g.expires_at else None)
            for g in account.grants
        ]  # fmt: skip
        assert read == expected, self._fail(f"read grants {read} != model {expected}")
        balance = model.monthly + model.purchased
        balance += sum(g.remaining for g in model.grants if g.id in shown)
        numbers = (account.balance, account.monthly_credits, account.purchased_credits)
        assert numbers == (balance, model.monthly, model.purchased), self._fail(
            f"read (balance, monthly, purchased) {numbers}"
        )
        assert account.reserved == model.reserved
        assert account.available == balance - model.reserved + model.overdraft

    # -- the operations --------------------------------------------------------------------

    async def grant(self) -> None:
        rng = self.rng
        amount = rng.randint(1, 60)
        priority = rng.choice([0, 20, 50, 50, 50, 80])
        source = rng.choice(GRANT_SOURCES)
        now = await self._server_ms()
        kind = rng.choices(["never", "soon", "far", "past"], weights=[30, 50, 15, 5])[0]
        expires_ms = {
            "never": None,
            "soon": now + rng.randint(40, 300),
            "far": now + rng.randint(1, 5) * 86_400_000,
            "past": now - rng.randint(1, 50),
        }[kind]
        expires_at = None if expires_ms is None else _at(expires_ms)
        key = self._maybe_key()
        made: list[str] = []

        def send(idempotency_key: str | None, changed: bool = False) -> Awaitable[Any]:
            return self.engine.grant(
                ACCOUNT, amount + (1 if changed else 0), source=source, priority=priority,
                expires_at=expires_at, idempotency_key=idempotency_key,
            )  # fmt: skip

        def values(result: Any) -> tuple[int, ...]:
            return (result.balance, result.available)

        async def call() -> list[Answer]:
            answers, result = await self._answers(send(key), values)
            if result is not None:
                made.append(result.grant_id)
                if key is not None:
                    self.keyed[key] = Keyed(send, values, answers[0], result.grant_id, "grant_id")
            return answers

        def apply(model: AccountModel, instant: int) -> list[Outcome]:
            gid = made[0] if made else str(uuid.uuid4())
            return [
                model.grant(
                    gid, amount, expires_ms=expires_ms, priority=priority, source=source,
                    now_ms=instant,
                )
            ]  # fmt: skip

        label = f"grant {amount} prio={priority} {source} expires={expires_ms} ({kind}) key={key}"
        await self.run(label, call, apply, past_expiry=expires_ms)
        self.grant_ids += made

    async def void(self) -> None:
        known = self.grant_ids and self.rng.random() < 0.85
        gid = self.rng.choice(self.grant_ids) if known else str(uuid.uuid4())

        async def call() -> list[Answer]:
            answers, _ = await self._answers(
                self.engine.void_grant(ACCOUNT, gid),
                lambda res: (res.voided, res.balance, res.available),
            )
            return answers

        await self.run(f"void {gid}", call, lambda model, now: [model.void(gid, now)])

    async def consume(self) -> None:
        cost = self.rng.randint(1, 50)
        key = self._maybe_key()
        charged: list[str] = []

        def send(idempotency_key: str | None, changed: bool = False) -> Awaitable[Any]:
            return self.engine.consume(
                ACCOUNT, "unit", cost + (1 if changed else 0), idempotency_key=idempotency_key
            )

        def values(result: Any) -> tuple[int, ...]:
            return (result.cost, result.remaining, result.balance)

        async def call() -> list[Answer]:
            answers, result = await self._answers(send(key), values)
            if result is not None:
                charged.append(result.transaction_id)
                if key is not None:
                    self.keyed[key] = Keyed(send, values, answers[0], result.transaction_id)
            return answers

        label = f"consume {cost} key={key}"
        await self.run(label, call, lambda model, now: [model.consume(cost, now)])
        self._remember_spends(charged, [cost])

    def _maybe_key(self) -> str | None:
        """An idempotency key for one call in four: a later retry may send it again."""
        return f"key-{self.seed}-{len(self.trace)}" if self.rng.random() < 0.25 else None

    async def retry(self) -> None:
        """A keyed call sent again: the first answer, replayed, nothing written; or with other
        arguments under the same key: refused as a conflict, nothing written."""
        if not self.keyed:
            return await self.consume()
        key = self.rng.choice(sorted(self.keyed))
        keyed, changed = self.keyed[key], self.rng.random() < 0.25
        replays: list[tuple[bool, str]] = []

        async def call() -> list[Answer]:
            answers, result = await self._answers(keyed.send(key, changed), keyed.values)
            if result is not None:
                replays.append((result.replayed, keyed.ident(result)))
            return answers

        def apply(model: AccountModel, instant: int) -> list[Outcome]:
            conflict = Answer(error="idempotency_conflict")
            return [Outcome(conflict if changed else keyed.first)]

        await self.run(f"retry {key} changed={changed}", call, apply)
        if not changed:
            assert replays == [(True, keyed.first_id)], self._fail(f"replay {replays}")
        return None

    async def consume_many(self) -> None:
        """Several charges of the account in one script run (one instant)."""
        costs = [self.rng.randint(1, 30) for _ in range(self.rng.randint(2, 4))]
        charged: list[str] = []

        async def call() -> list[Answer]:
            charges = [Charge(ACCOUNT, "unit", cost) for cost in costs]
            answers = []
            for outcome in await self.engine.consume_many(charges):
                if isinstance(outcome, QuotagateError):
                    answers.append(_refusal(outcome))
                    charged.append("")
                else:
                    values = (outcome.cost, outcome.remaining, outcome.balance)
                    answers.append(Answer(values=values))
                    charged.append(outcome.transaction_id)
            return answers

        await self.run(
            f"consume_many {costs}", call, lambda model, now: model.consume_many(costs, now)
        )
        self._remember_spends(charged, costs)

    def _remember_spends(self, transaction_ids: list[str], costs: list[int]) -> None:
        for txn, cost in zip(transaction_ids, costs, strict=False):
            if txn:
                self.model.spends[txn] = Spend(cost)

    async def refund(self) -> None:
        if not self.model.spends:
            return await self.consume()
        txn = self.rng.choice(sorted(self.model.spends))
        spend = self.model.spends[txn]
        amount = self.rng.randint(1, spend.cost + 3)
        counted = RefundCount(spend.cost, spend.refunded)

        async def call() -> list[Answer]:
            answers, _ = await self._answers(
                self.engine.credit(ACCOUNT, amount, "refund", refund_of=txn, counted=counted),
                lambda res: (res.balance, res.available),
            )
            return answers

        await self.run(
            f"refund {amount} of {txn}",
            call,
            lambda model, now: [model.credit(amount, "refund", now, refund_of=txn)],
        )
        return None

    async def credit(self) -> None:
        kind = self.rng.choice(["grant", "adjust"])
        amount = self.rng.randint(1, 40)
        if kind == "adjust" and self.rng.random() < 0.7:
            amount = -amount

        async def call() -> list[Answer]:
            answers, _ = await self._answers(
                self.engine.credit(ACCOUNT, amount, kind),
                lambda res: (res.balance, res.available),
            )
            return answers

        await self.run(
            f"credit {kind} {amount}", call, lambda model, now: [model.credit(amount, kind, now)]
        )

    async def hold(self) -> None:
        amount = self.rng.randint(1, 40)
        made: list[str] = []

        async def call() -> list[Answer]:
            answers, result = await self._answers(
                self.engine.hold(ACCOUNT, amount=amount, ttl_seconds=HOLD_TTL_SECONDS),
                lambda res: (res.amount, res.available),
            )
            if result is not None:
                made.append(result.hold_id)
            return answers

        def apply(model: AccountModel, instant: int) -> list[Outcome]:
            return [model.hold(made[0] if made else "refused", amount, instant)]

        await self.run(f"hold {amount}", call, apply)

    def _some_hold(self) -> str:
        if self.model.holds and self.rng.random() < 0.9:
            return self.rng.choice(sorted(self.model.holds))
        return str(uuid.uuid4())

    async def capture(self) -> None:
        hold_id = self._some_hold()
        held = self.model.holds.get(hold_id, 10)
        amount = self.rng.choice([None, self.rng.randint(1, held + 3)])
        charged: list[str] = []

        async def call() -> list[Answer]:
            answers, result = await self._answers(
                self.engine.capture(ACCOUNT, hold_id, amount),
                lambda res: (res.cost, res.remaining, res.balance),
            )
            if result is not None:
                charged.append(result.transaction_id)
            return answers

        await self.run(
            f"capture {amount} of {hold_id}",
            call,
            lambda model, now: [model.capture(hold_id, amount, now)],
        )
        self._remember_spends(charged, [held if amount is None else amount])

    async def reserve(self) -> None:
        amount, overrun = self.rng.randint(1, 30), self.rng.choice([0, 5, 20])
        made: list[str] = []

        async def call() -> list[Answer]:
            answers, result = await self._answers(
                self.engine.reserve(
                    ACCOUNT, amount=amount, ttl_seconds=HOLD_TTL_SECONDS, max_overrun=overrun
                ),
                lambda res: (res.amount, res.available),
            )
            if result is not None:
                made.append(ids.split_account_hold_id(result.hold_id)[1])
            return answers

        def apply(model: AccountModel, instant: int) -> list[Outcome]:
            return [model.reserve(made[0] if made else "refused", amount, overrun, instant)]

        await self.run(f"reserve {amount} overrun={overrun}", call, apply)

    async def settle(self) -> None:
        """A reservation's settle, or a settle of a hold settled, captured or never made."""
        known = sorted(self.model.overruns) + sorted(self.model.settled)
        hold_id = self.rng.choice(known) if known else str(uuid.uuid4())
        actual = self.rng.randint(0, 50)

        async def call() -> list[Answer]:
            answers, _ = await self._answers(
                self.engine.settle(ids.account_hold_id(ACCOUNT, hold_id), amount=actual),
                lambda res: (
                    int(res.transaction_id is not None), res.charged, res.shortfall,
                    res.released, res.remaining, res.balance,
                ),
            )  # fmt: skip
            return answers

        await self.run(
            f"settle {actual} of {hold_id}",
            call,
            lambda model, now: [model.settle(hold_id, actual, now)],
        )

    async def check(self) -> None:
        """check reads only: a grant due inside its window may count either way."""
        cost = self.rng.randint(1, 60)
        self.trace.append(f"check {cost}")
        before = await self._server_ms()
        result = await self.engine.check(ACCOUNT, "unit", cost)
        seen = await self._observe()
        answer = Answer(values=(int(result.allowed), result.cost, result.available))
        either = {self.model.check(cost, before), self.model.check(cost, seen.now_ms)}
        assert answer in either, self._fail(f"check {answer} not in {either}")
        assert seen.rows == [], self._fail(f"check wrote {seen.rows}")
        await self.check_state(seen)

    async def release(self) -> None:
        hold_id = self._some_hold()

        async def call() -> list[Answer]:
            answers, _ = await self._answers(
                self.engine.release(ACCOUNT, hold_id), lambda res: (res.released, res.available)
            )
            return answers

        await self.run(f"release {hold_id}", call, lambda model, now: [model.release(hold_id, now)])

    async def expire_grants(self) -> None:
        async def call() -> list[Answer]:
            return [Answer(values=await self.engine.expire_grants(ACCOUNT))]

        await self.run("expire_grants", call, lambda model, now: [model.expire_grants(now)])
        # The account's own sweep call scores it by exactly its next expiry.
        score = await self.engine.redis.zscore(self.index, ACCOUNT)
        next_expiry = self.model.next_expiry_ms()
        assert score == next_expiry, self._fail(f"index score {score} != next {next_expiry}")

    async def sweep(self) -> None:
        async def call() -> list[Answer]:
            return [Answer(values=await self.engine.expire_due_grants(self.partition))]

        await self.run("sweep", call, lambda model, now: [model.expire_grants(now)])

    async def renew(self) -> None:
        """A renewal for the next period (a period renewed already answers without looking
        at the grants: tests/engine/test_grant_expiry_edges.py)."""
        self.period = _next_period(self.period)
        period, reset = self.period, self.tier == "pro"

        async def call() -> list[Answer]:
            result = await self.engine.renew(ACCOUNT, period)
            values = (int(result.renewed), result.granted, result.expired, result.balance)
            return [Answer(values=values)]

        def apply(model: AccountModel, instant: int) -> list[Outcome]:
            end = _period_end_ms(period)
            return [model.renew(MONTHLY_GRANT, reset=reset, period_end_ms=end, now_ms=instant)]

        await self.run(f"renew {period}", call, apply)

    async def wait(self) -> None:
        pause_ms = self.rng.randint(10, 120)
        self.trace.append(f"sleep {pause_ms} ms")
        await asyncio.sleep(pause_ms / 1000)

    async def on_the_edge(self) -> None:
        """Waits until a grant's expiry is a millisecond or two away, then runs an operation
        that expires lazily: its expiry then often falls inside the operation's window, where
        the outbox decides."""
        now = await self._server_ms()
        coming = [g.expires_ms for g in self.model.grants if g.expires_ms and g.expires_ms > now]
        soonest = min(coming, default=None)
        if soonest is None or soonest - now > 400:
            return await self.wait()
        pause_ms = max(0, soonest - now - self.rng.randint(1, 4))
        self.trace.append(f"sleep {pause_ms} ms, to {soonest}")
        await asyncio.sleep(pause_ms / 1000)
        operation = self.rng.choice([self.consume, self.void, self.credit, self.expire_grants])
        return await operation()

    async def step(self) -> None:
        operations = {
            self.grant: 20,
            self.consume: 20,
            self.consume_many: 6,
            self.void: 8,
            self.refund: 6,
            self.credit: 6,
            self.hold: 8,
            self.capture: 7,
            self.release: 4,
            self.reserve: 5,
            self.settle: 5,
            self.check: 4,
            self.renew: 2,
            self.expire_grants: 4,
            self.sweep: 3,
            self.retry: 5,
            self.wait: 10,
            self.on_the_edge: 6,
        }
        operation = self.rng.choices(list(operations), weights=list(operations.values()))[0]
        await operation()


@pytest.mark.parametrize("seed", range(SEEDS))
async def test_scripts_follow_the_model(make_engine: EngineFactory, seed: int) -> None:
    engine = await make_engine(CONFIG)
    sequence = Sequence(engine, seed)
    await sequence.open_account()
    for _ in range(STEPS):
        await sequence.step()
