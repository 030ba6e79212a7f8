"""A reference model of one account's credits, after docs/grants.md and the scripts' headers
(what each operation answers and refuses).

The account holds its monthly credits, its purchased credits (below zero: its debt, within
its overdraft), its explicit grants and its holds. Each operation takes the instant it runs
at (``now_ms``, the server's time as the script would read it) and returns what it answers
(:class:`Answer`: the values of an ok reply, or an error code and its arguments) and the
outbox rows it writes (:class:`Row`, only the fields the model decides).

The model is deliberately plain: a list of grants sorted on every spend, no caching, no
shortcuts. Where it disagrees with the scripts, one of the two is wrong, and the test that
drives both says which operation and which field.

Holds here never pass their deadline (the tests give them minutes), so holds and reservations
only set credits aside until a capture, settle or release; their own expiry is covered by the
hold tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STANDING_PRIORITY = 50
"""The priority of the monthly and purchased grants (docs/grants.md)."""

MAX_GRANTS = 100
"""Explicit grants an account may hold at once (each charge reads them all)."""

NEVER_MS = 10**15
"""A spend-order expiry for "never": later than any expiry a grant can have."""

MONTHLY, PURCHASED = "monthly", "purchased"


@dataclass
class ModelGrant:
    """An explicit grant: what the account hash's ``g`` field keeps of it."""

    id: str
    remaining: int
    expires_ms: int | None
    priority: int
    source: str
    amount: int

    def due(self, now_ms: int) -> bool:
        return self.expires_ms is not None and self.expires_ms <= now_ms

    def encoded(self) -> str:
        """As one item of the ``g`` field: id|remaining|expires_ms or 0|priority|source|amount."""
        expires = self.expires_ms or 0
        return f"{self.id}|{self.remaining}|{expires}|{self.priority}|{self.source}|{self.amount}"


@dataclass(frozen=True)
class Row:
    """An outbox row as the model predicts it: its type, amount, balance after, and the
    optional fields (left out when empty, as the scripts leave them out)."""

    type: str
    amount: int
    balance: int
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Answer:
    """What an operation answers: ``error`` None and its ``values``, or an error code and
    the arguments the script gives with it."""

    values: tuple[int, ...] = ()
    error: str | None = None
    error_args: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Outcome:
    answer: Answer
    rows: list[Row] = field(default_factory=list)


def _ok(*values: int) -> Answer:
    return Answer(values=values)


def _error(code: str, *args: int) -> Answer:
    return Answer(error=code, error_args=args)


@dataclass
class Spend:
    """A spend the account may refund: what it charged and what its refunds returned."""

    cost: int
    refunded: int = 0


@dataclass
class AccountModel:
    """One account's credits. ``monthly_expires_ms`` places the monthly grant in the spend
    order: its period's end under ``renewal = "reset"``, None (never) under ``"add"``."""

    overdraft: int
    monthly: int = 0
    purchased: int = 0
    monthly_expires_ms: int | None = None
    grants: list[ModelGrant] = field(default_factory=list)
    holds: dict[str, int] = field(default_factory=dict)
    overruns: dict[str, int] = field(default_factory=dict)
    """The reservations among the holds: what a settle may charge above the held amount."""
    settled: set[str] = field(default_factory=set)
    spends: dict[str, Spend] = field(default_factory=dict)

    # -- what the account is --------------------------------------------------------------

    @property
    def balance(self) -> int:
        return self.monthly + self.purchased + sum(g.remaining for g in self.grants)

    @property
    def reserved(self) -> int:
        return sum(self.holds.values())

    @property
    def available(self) -> int:
        return self.balance - self.reserved + self.overdraft

    def grant_field(self) -> str | None:
        """The account hash's ``g`` field: the explicit grants in spend order, None for none."""
        if not self.grants:
            return None
        return ";".join(g.encoded() for g in self._explicit_in_order())

    def spend_order(self) -> list[str | ModelGrant]:
        """Every grant holding credits in the order a spend takes from them: priority, then
        soonest expiry (never last), then oldest (monthly, purchased, then explicit by id)."""
        ranked: list[tuple[tuple[int, int, int, str], str | ModelGrant]] = []
        if self.monthly > 0:
            expiry = self.monthly_expires_ms or NEVER_MS
            ranked.append(((STANDING_PRIORITY, expiry, 0, ""), MONTHLY))
        if self.purchased > 0:
            ranked.append(((STANDING_PRIORITY, NEVER_MS, 1, ""), PURCHASED))
        for g in self.grants:
            ranked.append(((g.priority, g.expires_ms or NEVER_MS, 2, g.id), g))
        ranked.sort(key=lambda pair: pair[0])
        return [grant for _, grant in ranked]

    def _explicit_in_order(self) -> list[ModelGrant]:
        return [g for g in self.spend_order() if isinstance(g, ModelGrant)]

    # -- the rules every operation shares --------------------------------------------------

    def _expire(self, now_ms: int) -> list[Row]:
        """Lazy expiry: every explicit grant past its expiry leaves, with one expire row."""
        rows = []
        balance = self.balance
        for g in self._explicit_in_order():
            if g.due(now_ms):
                balance -= g.remaining
                rows.append(Row("expire", -g.remaining, balance, (("gr", g.id),)))
        self.grants = [g for g in self.grants if not g.due(now_ms)]
        return rows

    def _has_expiring(self) -> bool:
        return any(g.expires_ms is not None for g in self.grants)

    def _take(self, amount: int) -> tuple[int, dict[str, int]]:
        """Takes ``amount`` in spend order; what the grants lack becomes debt on purchased.
        Returns what the monthly grant gave and what each explicit grant gave."""
        left, from_monthly, draws = amount, 0, {}
        for source in self.spend_order():
            if left == 0:
                break
            if source == MONTHLY:
                from_monthly = min(self.monthly, left)
                self.monthly -= from_monthly
                left -= from_monthly
            elif source == PURCHASED:
                take = min(self.purchased, left)
                self.purchased -= take
                left -= take
            else:
                assert isinstance(source, ModelGrant)
                take = min(source.remaining, left)
                source.remaining -= take
                left -= take
                draws[source.id] = take
        self.purchased -= left
        self.grants = [g for g in self.grants if g.remaining > 0]
        return from_monthly, draws

    def _spend_row(self, amount: int, hold_id: str | None = None) -> Row:
        from_monthly, draws = self._take(amount)
        extra: list[tuple[str, str]] = []
        if from_monthly:
            extra.append(("dm", str(-from_monthly)))
        if hold_id is not None:
            extra.append(("hold", hold_id))
        if draws:
            extra.append(("gd", ",".join(f"{gid}:{credits}" for gid, credits in draws.items())))
        return Row("spend", -amount, self.balance, tuple(extra))

    # -- operations ------------------------------------------------------------------------

    def consume(self, cost: int, now_ms: int) -> Outcome:
        """A charge: refused when available credits are short, else taken in spend order."""
        rows = self._expire(now_ms)
        available = self.available
        if available < cost:
            return Outcome(_error("insufficient_credits", cost, available), rows)
        rows.append(self._spend_row(cost))
        return Outcome(_ok(cost, available - cost, self.balance), rows)

    def consume_many(self, costs: list[int], now_ms: int) -> list[Outcome]:
        """Charges of one account sent together: one script run, one instant, in order."""
        return [self.consume(cost, now_ms) for cost in costs]

    def grant(
        self,
        grant_id: str,
        amount: int,
        *,
        expires_ms: int | None,
        priority: int,
        source: str,
        now_ms: int,
    ) -> Outcome:
        """A new explicit grant. One whose expiry has passed is bad input: nothing happens."""
        if expires_ms is not None and expires_ms <= now_ms:
            return Outcome(_error("invalid_argument"))
        rows = self._expire(now_ms)
        if len(self.grants) >= MAX_GRANTS:
            return Outcome(_error("too_many_grants"), rows)
        new = ModelGrant(grant_id, amount, expires_ms, priority, source, amount)
        self.grants.append(new)
        terms = [("gr", grant_id)]
        if expires_ms is not None:
            terms.append(("gx", str(expires_ms)))
        terms += [("gp", str(priority)), ("gs", source)]
        rows.append(Row("grant", amount, self.balance, tuple(terms)))
        return Outcome(_ok(self.balance, self.available), rows)

    def void(self, grant_id: str, now_ms: int) -> Outcome:
        """Takes back what is left of an explicit grant with an adjust row naming it."""
        rows = self._expire(now_ms) if self._has_expiring() else []
        found = next((g for g in self.grants if g.id == grant_id), None)
        if found is None:
            return Outcome(_error("grant_not_found"), rows)
        self.grants.remove(found)
        rows.append(Row("adjust", -found.remaining, self.balance, (("gr", grant_id),)))
        return Outcome(_ok(found.remaining, self.balance, self.available), rows)

    def credit(self, amount: int, kind: str, now_ms: int, refund_of: str | None = None) -> Outcome:
        """Credits to the purchased grant (grant, refund) or a signed adjustment of it."""
        rows = self._expire(now_ms) if self._has_expiring() else []
        extra: tuple[tuple[str, str], ...] = ()
        if kind == "refund":
            assert refund_of is not None
            spend = self.spends[refund_of]
            if spend.refunded + amount > spend.cost:
                return Outcome(_error("refund_exceeds_spend", spend.cost, spend.refunded), rows)
            spend.refunded += amount
            extra = (("rf", refund_of),)
        if amount < 0 and self.available + amount < 0:
            return Outcome(_error("adjust_below_floor", self.available), rows)
        self.purchased += amount
        rows.append(Row(kind, amount, self.balance, extra))
        return Outcome(_ok(self.balance, self.available), rows)

    def hold(self, hold_id: str, amount: int, now_ms: int) -> Outcome:
        """Sets credits aside; they leave no grant until a capture."""
        rows = self._expire(now_ms)
        available = self.available
        if available < amount:
            return Outcome(_error("insufficient_credits", amount, available), rows)
        self.holds[hold_id] = amount
        return Outcome(_ok(amount, available - amount), rows)

    def check(self, cost: int, now_ms: int) -> Answer:
        """Would a charge of ``cost`` be allowed: (allowed 0|1, cost, available). Reads only;
        grants past their expiry do not count, written or not."""
        due = sum(g.remaining for g in self.grants if g.due(now_ms))
        available = self.available - due
        return _ok(int(available >= cost), cost, available)

    def reserve(self, hold_id: str, amount: int, max_overrun: int, now_ms: int) -> Outcome:
        """A hold that a settle ends with its actual cost, up to ``max_overrun`` above it."""
        outcome = self.hold(hold_id, amount, now_ms)
        if outcome.answer.ok:
            self.overruns[hold_id] = max_overrun
        return outcome

    def settle(self, hold_id: str, actual: int, now_ms: int) -> Outcome:
        """Ends a reservation: charges the actual cost up to the held amount and its overrun,
        as far as the credits allow (what other holds set aside stays aside); the rest of the
        hold goes back. Answers (charged a spend 0|1, charged, shortfall, released,
        available, balance)."""
        if hold_id not in self.holds:
            return Outcome(_error("hold_settled" if hold_id in self.settled else "hold_not_found"))
        rows = self._expire(now_ms)
        held = self.holds.pop(hold_id)
        overrun = self.overruns.pop(hold_id, 0)
        affordable = max(0, self.available)
        charged = min(actual, held + overrun, affordable)
        released = held - min(charged, held)
        if charged > 0:
            rows.append(self._spend_row(charged, hold_id))
        self.settled.add(hold_id)
        values = (int(charged > 0), charged, actual - charged, released)
        return Outcome(_ok(*values, self.available, self.balance), rows)

    def capture(self, hold_id: str, amount: int | None, now_ms: int) -> Outcome:
        """Charges a hold (all of it by default) and gives the rest back; refused, and the
        hold kept, when the account's credits fell behind it."""
        held = self.holds.get(hold_id)
        if held is None:
            return Outcome(_error("hold_not_found"))
        amount = held if amount is None else amount
        if amount > held:
            return Outcome(_error("capture_exceeds_hold", held))
        rows = self._expire(now_ms)
        others = self.reserved - held
        if self.balance - amount - others + self.overdraft < 0:
            return Outcome(
                _error("insufficient_credits", amount, self.balance - others + self.overdraft),
                rows,
            )
        del self.holds[hold_id]
        self.overruns.pop(hold_id, None)
        rows.append(self._spend_row(amount, hold_id))
        return Outcome(_ok(amount, self.available, self.balance), rows)

    def release(self, hold_id: str, now_ms: int) -> Outcome:
        held = self.holds.get(hold_id)
        if held is None:
            return Outcome(_error("hold_not_found"))
        rows = self._expire(now_ms)
        del self.holds[hold_id]
        self.overruns.pop(hold_id, None)
        return Outcome(_ok(held, self.available), rows)

    def expire_grants(self, now_ms: int) -> Outcome:
        """The sweep's call for this account: (grants expired, credits expired)."""
        rows = self._expire(now_ms)
        return Outcome(_ok(len(rows), -sum(row.amount for row in rows)), rows)

    def renew(self, monthly_grant: int, *, reset: bool, period_end_ms: int, now_ms: int) -> Outcome:
        """A renewal for a new period: under reset, what is left of the monthly credits expires
        and the grant replaces it (expiring at the new period's end); under add, the grant
        is added (capped by the tier's credit limit, not reached here). Answers (renewed,
        granted, expired, balance); an account event row follows its transactions."""
        rows = self._expire(now_ms)
        expired = 0
        if reset and self.monthly > 0:
            expired, self.monthly = self.monthly, 0
            rows.append(Row("expire", -expired, self.balance, (("dm", str(-expired)),)))
        self.monthly += monthly_grant
        rows.append(Row("grant", monthly_grant, self.balance, (("dm", str(monthly_grant)),)))
        rows.append(Row("account", 0, 0))
        if reset:
            self.monthly_expires_ms = period_end_ms
        return Outcome(_ok(1, monthly_grant, expired, self.balance), rows)

    def next_expiry_ms(self) -> int | None:
        return min((g.expires_ms for g in self.grants if g.expires_ms is not None), default=None)
