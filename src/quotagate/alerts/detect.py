"""Alerts found in what the flush has just committed: no work on the charging path.

The flush calls :func:`after_batch` once a batch is in the ledger. From the batch's entries
(the outbox's, in the order Redis made them) it takes each account's balances and spends;
from the ledger, the accounts' tiers, the rules that fired and wait to re-arm
(``alert_arms``), and the spends per hour (``usage_hourly``, which the batch's commit has
brought up to date). It then writes the alerts and the rules' new state in one transaction
(:mod:`quotagate.alerts.store`), and counts and logs them.

- Balance thresholds: each balance after, in order (a dip and a recovery inside one batch
  count). Fired once when it goes below; re-armed at or above.
- Unusual consumption: per account that spent in the batch, its spend over the rule's
  window (the last ``window_hours`` UTC hours, the one of its newest transaction included)
  against ``multiple`` times an exponentially weighted average of the earlier windows, or an
  absolute ceiling. Once per episode: re-armed by a check that finds it usual again.
- Expiring monthly credits: at most once a minute per process (and whenever asked, see
  :func:`expiry_warnings`), one statement over ``user_credits`` raises a warning per account
  of a ``reset`` tier with monthly credits left, once per account and month, from
  ``warn_hours_before`` the month's end.

A failure here is logged and never fails the flush: the batch is committed whatever
happens, and a batch read twice raises no alert twice (state rows and ``dedupe_key``).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from quotagate.alerts import rules
from quotagate.alerts.store import Alert, NewAlert, announce, insert_alerts
from quotagate.config import Config, Consumption
from quotagate.ledger.ledger import Ledger
from quotagate.ledger.outbox import RawEntry, stream_ms
from quotagate.ledger.postgres import in_transaction

log = logging.getLogger(__name__)

EXPIRY_CHECK_SECONDS = 60.0
"""How often a flushing process looks for monthly credits about to expire."""

_HOUR = timedelta(hours=1)


@dataclass(slots=True)
class AccountActivity:
    """What one batch did to one account, in order."""

    balances: list[tuple[str, int]] = field(default_factory=list)
    """(transaction id, balance after)."""
    spent: int = 0
    last_ms: int = 0


def activity(raw: Sequence[RawEntry]) -> dict[str, AccountActivity]:
    """Per account, the batch's transactions (account events left out)."""
    found: dict[str, AccountActivity] = defaultdict(AccountActivity)
    for stream_id, values in raw:
        fields = dict(zip(values[0::2], values[1::2], strict=False))
        kind = fields.get(b"t")
        if kind is None or kind == b"account" or b"a" not in fields:
            continue
        try:
            account = fields[b"a"].decode()
            entry = found[account]
            entry.balances.append((fields[b"id"].decode(), int(fields[b"bal"])))
            # Entries take their time from the stream id; older ones carried it in "ts".
            at_ms = int(fields[b"ts"]) if b"ts" in fields else stream_ms(_text(stream_id))
            entry.last_ms = max(entry.last_ms, at_ms)
            if kind == b"spend":
                entry.spent -= int(fields[b"amt"])
        except (KeyError, ValueError, UnicodeDecodeError):
            continue  # the flush quarantines what does not parse
    return dict(found)


def _text(stream_id: bytes | str) -> str:
    return stream_id.decode() if isinstance(stream_id, bytes) else stream_id


class _Expiry:
    """When this process last looked for expiring credits."""

    next_check = 0.0


async def after_batch(config: Config, ledger: Ledger, raw: Sequence[RawEntry]) -> list[Alert]:
    """The alerts this committed batch raises (logged, never raised: see the module)."""
    if not config.alerts.any:
        return []
    try:
        raised = await _detect(config, ledger, activity(raw))
        if config.alerts.expiry is not None and time.monotonic() >= _Expiry.next_check:
            _Expiry.next_check = time.monotonic() + EXPIRY_CHECK_SECONDS
            raised += await expiry_warnings(config, ledger)
    except Exception:
        log.exception("alert detection failed for a flushed batch; the flush goes on")
        return []
    return raised


async def _detect(config: Config, ledger: Ledger, seen: dict[str, AccountActivity]) -> list[Alert]:
    if not seen or not (config.alerts.balance or config.alerts.consumption):
        return []

    async def work(conn: asyncpg.Connection) -> list[Alert]:
        accounts = sorted(seen)
        tiers = dict(
            await conn.fetch(
                "SELECT account_id, tier FROM user_credits WHERE account_id = ANY($1::text[])",
                accounts,
            )
        )
        arms = {
            (r["account_id"], r["rule"])
            for r in await conn.fetch(
                "SELECT account_id, rule FROM alert_arms WHERE account_id = ANY($1::text[])"
                " FOR UPDATE",
                accounts,
            )
        }
        state = _ArmChanges(arms)
        new = _balance_alerts(config, seen, tiers, state)
        for rule in config.alerts.consumption:
            new += await _consumption_alerts(conn, rule, seen, tiers, state)
        await state.write(conn)
        return await insert_alerts(conn, new)

    raised = await in_transaction(ledger.pool, work)
    announce(raised)
    return raised


class _ArmChanges:
    """The rules that fired for an account (armed = no row), and the batch's changes."""

    def __init__(self, existing: set[tuple[str, str]]) -> None:
        self.existing = existing
        self.fired: dict[tuple[str, str], datetime] = {}
        self.seen: dict[tuple[str, str], datetime] = {}
        self.rearmed: set[tuple[str, str]] = set()

    def armed(self, account_id: str, rule: str) -> bool:
        return (account_id, rule) not in self.existing

    def set(self, account_id: str, rule: str, armed: bool, at: datetime) -> None:
        key = (account_id, rule)
        if armed and key in self.existing:
            self.rearmed.add(key)
        elif not armed and key not in self.existing:
            self.fired[key] = at
        elif not armed:
            self.seen[key] = at

    async def write(self, conn: asyncpg.Connection) -> None:
        if self.rearmed:
            accounts, names = zip(*sorted(self.rearmed), strict=True)
            await conn.execute(
                "DELETE FROM alert_arms a USING unnest($1::text[], $2::text[]) AS r(account_id,"
                " rule) WHERE a.account_id = r.account_id AND a.rule = r.rule",
                list(accounts), list(names),
            )  # fmt: skip
        fired = sorted(self.fired.items())
        if fired:
            await conn.executemany(
                "INSERT INTO alert_arms (account_id, rule, fired_at, seen_at)"
                " VALUES ($1, $2, $3, $3) ON CONFLICT DO NOTHING",
                [(account, rule, at) for (account, rule), at in fired],
            )
        seen = sorted(self.seen.items())
        if seen:
            await conn.executemany(
                "UPDATE alert_arms SET seen_at = $3 WHERE account_id = $1 AND rule = $2",
                [(account, rule, at) for (account, rule), at in seen],
            )


def _balance_alerts(
    config: Config,
    seen: dict[str, AccountActivity],
    tiers: dict[str, str],
    state: _ArmChanges,
) -> list[NewAlert]:
    new: list[NewAlert] = []
    for account_id, act in seen.items():
        tier = tiers.get(account_id, config.default_tier)
        at = _time(act.last_ms)
        for rule in config.alerts.balance:
            if not rules.applies(rule.tier, rule.account, tier, account_id):
                continue
            threshold = rules.threshold_credits(rule, config.tiers.get(tier))
            if threshold is None:
                continue
            walk = rules.walk_balance(act.balances, threshold, state.armed(account_id, rule.name))
            state.set(account_id, rule.name, walk.armed, at)
            balance_of = dict(act.balances)
            new += [
                NewAlert(
                    "balance_below",
                    account_id,
                    rule.name,
                    f"{rule.name}|{account_id}|{txn}",
                    {
                        "tier": tier,
                        "threshold": threshold,
                        "balance": balance_of[txn],
                        "transaction_id": txn,
                    },
                )
                for txn in walk.fired_at
            ]
    return new


_WINDOW_SPENDS_SQL = """
SELECT account_id, hour, -sum(amount)::bigint AS spent
FROM usage_hourly
WHERE account_id = ANY($1::text[]) AND type = 'spend' AND hour >= $2 AND hour <= $3
GROUP BY 1, 2
"""


async def _consumption_alerts(
    conn: asyncpg.Connection,
    rule: Consumption,
    seen: dict[str, AccountActivity],
    tiers: dict[str, str],
    state: _ArmChanges,
) -> list[NewAlert]:
    spenders = {
        a: act for a, act in seen.items()
        if act.spent > 0 and rules.applies(rule.tier, None, tiers.get(a, ""), a)
    }  # fmt: skip
    if not spenders:
        return []
    now_hour = _time(max(act.last_ms for act in spenders.values())).replace(
        minute=0, second=0, microsecond=0
    )
    window = rule.window_hours
    first = now_hour - _HOUR * (window * (rule.baseline_windows + 1) - 1)
    hours: dict[str, dict[datetime, int]] = defaultdict(dict)
    for r in await conn.fetch(_WINDOW_SPENDS_SQL, sorted(spenders), first, now_hour):
        hours[r["account_id"]][r["hour"]] = r["spent"]
    new: list[NewAlert] = []
    for account_id in sorted(spenders):
        windows = [
            sum(
                hours[account_id].get(now_hour - _HOUR * (w * window + h), 0) for h in range(window)
            )
            for w in range(rule.baseline_windows, -1, -1)
        ]  # oldest first; the last is the current window
        spent, earlier = windows[-1], windows[:-1]
        hit, usual = rules.unusual(rule, spent, earlier)
        start = now_hour - _HOUR * (window - 1)
        if hit and state.armed(account_id, rule.name):
            new.append(NewAlert(
                "unusual_consumption", account_id, rule.name,
                f"{rule.name}|{account_id}|{start.isoformat()}",
                {"tier": tiers.get(account_id), "window_start": start.isoformat(),
                 "window_hours": window, "spent": spent, "usual": round(usual, 2),
                 "multiple": rule.multiple, "ceiling": rule.ceiling},
            ))  # fmt: skip
        state.set(account_id, rule.name, not hit, now_hour)
    return new


def _time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _month_end(now: datetime) -> datetime:
    start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


_EXPIRY_SQL = """
SELECT account_id, tier, monthly_credits FROM user_credits
WHERE tier = ANY($1::text[]) AND status = 'active' AND monthly_credits > 0
  AND NOT EXISTS (SELECT 1 FROM alerts WHERE dedupe_key = 'expiry|' || account_id || '|' || $2)
ORDER BY account_id
"""


_GRANT_EXPIRY_SQL = """
SELECT g.account_id, g.id, g.source, g.remaining, g.expires_at FROM credit_grants g
JOIN user_credits u ON u.account_id = g.account_id AND u.status = 'active'
WHERE g.remaining > 0 AND g.ended_at IS NULL AND g.expires_at > $1 AND g.expires_at <= $2
  AND NOT EXISTS (
    SELECT 1 FROM alerts WHERE dedupe_key = 'grant-expiry|' || g.account_id || '|' || g.id)
ORDER BY g.expires_at, g.id
"""


async def expiry_warnings(
    config: Config, ledger: Ledger, now: datetime | None = None
) -> list[Alert]:
    """Warn, within the configured time before they expire, the accounts of ``reset`` tiers
    whose monthly credits are unused (once per account and month), and the accounts with an
    explicit grant that still holds credits (once per grant)."""
    expiry = config.alerts.expiry
    if expiry is None:
        return []
    now = now or datetime.now(UTC)
    warn = timedelta(hours=expiry.warn_hours_before)

    async def work(conn: asyncpg.Connection) -> list[Alert]:
        new = [
            *await _monthly_expiry(conn, config, now, warn),
            *await _grant_expiry(conn, now, warn),
        ]
        return await insert_alerts(conn, new)

    raised = await in_transaction(ledger.pool, work)
    announce(raised)
    return raised


async def _grant_expiry(conn: asyncpg.Connection, now: datetime, warn: timedelta) -> list[NewAlert]:
    return [
        NewAlert(
            "credits_expiring",
            r["account_id"],
            "grant_expiry",
            f"grant-expiry|{r['account_id']}|{r['id']}",
            {
                "grant_id": r["id"],
                "source": r["source"],
                "remaining": r["remaining"],
                "expires_at": r["expires_at"].isoformat(),
            },
        )
        for r in await conn.fetch(_GRANT_EXPIRY_SQL, now, now + warn)
    ]


async def _monthly_expiry(
    conn: asyncpg.Connection, config: Config, now: datetime, warn: timedelta
) -> list[NewAlert]:
    end = _month_end(now)
    reset_tiers = sorted(name for name, tier in config.tiers.items() if tier.renewal == "reset")
    if now < end - warn or not reset_tiers:
        return []
    period = now.astimezone(UTC).strftime("%Y-%m")
    return [
        NewAlert(
            "credits_expiring",
            r["account_id"],
            "expiry",
            f"expiry|{r['account_id']}|{period}",
            {
                "tier": r["tier"],
                "monthly_credits": r["monthly_credits"],
                "period": period,
                "expires_at": end.isoformat(),
            },
        )
        for r in await conn.fetch(_EXPIRY_SQL, reset_tiers, period)
    ]
