"""`quotagate accounts grant|grants|void-grant`: an account's explicit grants (``docs/grants.md``).

A new grant is money in: it is written through to the ledger before the command returns
(``durable: no`` when PostgreSQL could not take it; the outbox still carries it). Bad terms
(a priority out of 0..100, an unknown source, an expiry in the past) exit 2 with one sentence,
before anything is written.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from quotagate.cli.accounts import accounts, grant_dict, grant_row, idempotency_option
from quotagate.cli.backends import Backends, ready_engine, run
from quotagate.cli.ops_support import fields, iso, json_option
from quotagate.cli.output import emit_json, table
from quotagate.engine.grants import STANDING_PRIORITY
from quotagate.engine.results import GRANT_SOURCES, Account
from quotagate.errors import ValidationError
from quotagate.ledger.usage import parse_instant

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
"""What ``--expires-in`` counts in: 30d, 12h, 90m, 45s, 2w."""

_DURATION_RE = re.compile(r"^([1-9][0-9]{0,9})([smhdw])$")


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s`` or ``2w`` as a time span; ValidationError otherwise."""
    match = _DURATION_RE.match(text.strip())
    if match is None:
        raise ValidationError(
            f"--expires-in takes a whole number and a unit (s, m, h, d or w), such as 30d or "
            f"12h, not {text!r}"
        )
    return timedelta(seconds=int(match.group(1)) * DURATION_UNITS[match.group(2)])


def expiry(
    expires_in: str | None, expires_at: str | None, now: datetime
) -> tuple[datetime | None, timedelta | None]:
    """When the grant's rest expires, from one of the two options: an instant, or a time
    from when Redis makes it (so that a retry under the same key asks for the same grant);
    (None, None): never."""
    if expires_in is not None and expires_at is not None:
        raise ValidationError("give either --expires-in or --expires-at, not both")
    if expires_in is not None:
        return None, parse_duration(expires_in)
    if expires_at is None:
        return None, None
    moment = parse_instant(expires_at, "--expires-at")
    if moment <= now:
        raise ValidationError(
            f"--expires-at {expires_at} is in the past: a grant must expire later"
        )
    return moment, None


@accounts.command("grant")
@click.argument("account_id")
@click.argument("amount", type=int)
@click.option("--source", type=click.Choice(GRANT_SOURCES), default="promotion",
              show_default=True, help="Where the credits came from.")  # fmt: skip
@click.option("--priority", type=click.IntRange(0, 100), default=STANDING_PRIORITY,
              show_default=True, help="0..100: lower is spent first.")  # fmt: skip
@click.option("--expires-in", help="What is left expires after this long: 30d, 12h, 90m, 2w.")
@click.option("--expires-at", help="What is left expires then (ISO 8601; UTC unless it says).")
@click.option("--description", help="Shown in the history.")
@idempotency_option
@json_option
def grant_command(
    account_id: str,
    amount: int,
    source: str,
    priority: int,
    expires_in: str | None,
    expires_at: str | None,
    description: str | None,
    idempotency_key: str | None,
    as_json: bool,
) -> None:
    """Give an account an explicit grant: credits spent by priority, then soonest expiry,
    then age, whose rest expires at its expiry (none given: never)."""
    expires, lifetime = expiry(expires_in, expires_at, datetime.now(UTC))

    async def work(b: Backends) -> dict[str, Any]:
        assert b.ledger is not None
        engine = await ready_engine(b)
        result = await engine.grant(
            account_id, amount, source=source, priority=priority, expires_at=expires,
            expires_in=lifetime, description=description, idempotency_key=idempotency_key,
        )  # fmt: skip
        durable = await b.ledger.write_through(engine, account_id, [result.outbox_entry_id])
        out = asdict(result)
        out.pop("outbox_entry_id")
        out["expires_at"] = iso(result.expires_at)  # as Redis fixed it
        return {"account_id": account_id, "amount": amount, "source": source,
                "priority": priority, **out, "durable": durable}  # fmt: skip

    out = run(work)
    if as_json:
        emit_json(out)
        return
    click.echo(fields(out))


@accounts.command("grants")
@click.argument("account_id")
@json_option
def list_grants(account_id: str, as_json: bool) -> None:
    """An account's grants, in the order a spend takes from them, and its next expiry."""

    async def work(b: Backends) -> Account:
        return await b.engine.get_account(account_id)

    account = run(work, ledger=None)
    if as_json:
        emit_json(
            {
                "grants": [grant_dict(g) for g in account.grants],
                "next_expiry": iso(account.next_expiry),
            }
        )
        return
    click.echo(table([grant_row(g) for g in account.grants]))
    click.echo(f"\nnext expiry: {iso(account.next_expiry) or 'none'}")


@accounts.command("void-grant")
@click.argument("account_id")
@click.argument("grant_id")
@click.option("--description", help='Shown in the history (default: "grant voided").')
@idempotency_option
@json_option
def void_grant(
    account_id: str,
    grant_id: str,
    description: str | None,
    idempotency_key: str | None,
    as_json: bool,
) -> None:
    """Take back what is left of an explicit grant (an adjust transaction). The available
    credits may go below zero; exit 2 when the account holds no such grant."""

    async def work(b: Backends) -> dict[str, Any]:
        assert b.ledger is not None
        engine = await ready_engine(b)
        result = await engine.void_grant(
            account_id, grant_id, description=description, idempotency_key=idempotency_key
        )
        durable = await b.ledger.write_through(engine, account_id, [result.outbox_entry_id])
        out = asdict(result)
        out.pop("outbox_entry_id")
        return {"account_id": account_id, "grant_id": grant_id, **out, "durable": durable}

    out = run(work)
    if as_json:
        emit_json(out)
        return
    click.echo(fields(out))
