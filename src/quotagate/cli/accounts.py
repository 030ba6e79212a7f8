"""`quotagate accounts create|update|show|list`, `grant`, `history`: accounts for operators
(an account's explicit grants, `accounts grant|grants|void-grant`, are in
:mod:`quotagate.cli.grants`).

Writes go through the engine like any request, and money in is written through to the
ledger before the command returns (``durable: no`` when PostgreSQL could not take it: the
outbox still carries it). Listings come from the ledger (the accounts it knows, in order),
with the live balance read from Redis.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import click

from quotagate.cli.backends import Backends, ready_engine, run
from quotagate.cli.ops_support import fields, iso, json_option
from quotagate.cli.output import emit_json, table
from quotagate.engine.grants import stored_balance
from quotagate.engine.results import Account, Grant
from quotagate.engine.validate import CREDIT_TYPES, KEEP, Keep
from quotagate.errors import AccountNotFound, ValidationError
from quotagate.ids import check_account_id, pool_of
from quotagate.jobs.pg import postgres_errors
from quotagate.ledger import HistoryPage
from quotagate.ledger.refunds import refund

LIST_MAX = 1000

_CREDIT_NAMES = {"grant": "a grant", "earn": "an earning", "refund": "a refund"}
"""The credits that add, as a sentence names them."""


@click.group()
def accounts() -> None:
    """Accounts: create, update (tier, status, overdraft), show, list."""


def _account_dict(a: Account) -> dict[str, Any]:
    out = asdict(a)
    out["created_at"] = iso(a.created_at)
    out["last_reset_at"] = iso(a.last_reset_at)
    out["holds"] = [{**asdict(h), "expires_at": iso(h.expires_at)} for h in a.holds]
    out["grants"] = [grant_dict(g) for g in a.grants]
    out["next_expiry"] = iso(a.next_expiry)
    return out


def grant_dict(g: Grant) -> dict[str, Any]:
    return {**asdict(g), "expires_at": iso(g.expires_at), "created_at": iso(g.created_at)}


def grant_row(g: Grant) -> dict[str, Any]:
    """A grant as a line of a table for people."""
    return {
        "id": g.id,
        "source": g.source,
        "priority": g.priority,
        "remaining": f"{g.remaining}/{g.amount}",
        "expires": iso(g.expires_at) or "never",
    }


@dataclass(frozen=True)
class _Settings:
    """What create and update set (None and KEEP: as it is, or the default for a new one)."""

    tier: str | None
    status: str | None
    overdraft_limit: int | None
    member_limit: int | Keep | None
    own_credits_first: bool | None

    def empty(self) -> bool:
        return self == _Settings(None, None, None, KEEP, None)


def _member_limit(text: str | None) -> int | Keep | None:
    """--member-limit: credits, or "none" to lift the limit; left out: as it is."""
    if text is None:
        return KEEP
    if text == "none":
        return None
    if not text.isdigit():
        raise ValidationError('--member-limit is a number of credits, or "none" for no limit')
    return int(text)


def _upsert(
    account_id: str,
    settings: _Settings,
    idempotency_key: str | None,
    *,
    must_be_new: bool,
) -> dict[str, Any]:
    async def work(b: Backends) -> dict[str, Any]:
        assert b.ledger is not None
        engine = await ready_engine(b)
        if must_be_new and idempotency_key is None:
            await _refuse_existing(b, account_id)
        result = await engine.upsert_account(
            account_id, tier=settings.tier, status=settings.status,
            overdraft_limit=settings.overdraft_limit, member_limit=settings.member_limit,
            own_credits_first=settings.own_credits_first, idempotency_key=idempotency_key,
        )  # fmt: skip
        durable = await b.ledger.write_through(engine, account_id, result.outbox_entry_ids)
        out = asdict(result)
        out.pop("outbox_entry_ids")
        return {**out, "durable": durable}

    return run(work)


def _print_upsert(out: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(out)
        return
    what = "created" if out["created"] else "updated"
    click.echo(f"{what} account {out['account_id']}")
    shown = ("tier", "status", "overdraft_limit", "balance", "available", "durable")
    click.echo(fields({k: out[k] for k in shown}))


_tier = click.option("--tier", help="A tier of the config (new accounts: the default tier).")
_status = click.option("--status", type=click.Choice(["active", "banned"]))
_overdraft = click.option(
    "--overdraft-limit", type=click.IntRange(min=0), help="Credits it may go below zero."
)
_member_limit_option = click.option(
    "--member-limit",
    metavar="CREDITS|none",
    help="A pool's member (<pool>~<name>): the most its pool pays for it per period.",
)
_own_first_option = click.option(
    "--own-credits-first/--pool-pays-all",
    default=None,
    help="A pool's member: its own credits go first, or the pool pays all (the default).",
)
idempotency_option = click.option(
    "--idempotency-key", help="Retry safely: the same key does it once."
)


@accounts.command()
@click.argument("account_id")
@_tier
@_status
@_overdraft
@_member_limit_option
@_own_first_option
@idempotency_option
@json_option
def create(
    account_id: str,
    tier: str | None,
    status: str | None,
    overdraft_limit: int | None,
    member_limit: str | None,
    own_credits_first: bool | None,
    idempotency_key: str | None,
    as_json: bool,
) -> None:
    """Create an account (active, with its tier's opening grant). Exit 2 if it exists.

    A member of a pool is created as <pool>~<name>, once the pool exists."""
    settings = _Settings(
        tier, status, overdraft_limit, _member_limit(member_limit), own_credits_first
    )
    out = _upsert(account_id, settings, idempotency_key, must_be_new=True)
    _print_upsert(out, as_json)


@accounts.command()
@click.argument("account_id")
@_tier
@_status
@_overdraft
@_member_limit_option
@_own_first_option
@idempotency_option
@json_option
def update(
    account_id: str,
    tier: str | None,
    status: str | None,
    overdraft_limit: int | None,
    member_limit: str | None,
    own_credits_first: bool | None,
    idempotency_key: str | None,
    as_json: bool,
) -> None:
    """Change an account's tier, status (ban, unban), overdraft limit or member settings."""
    settings = _Settings(
        tier, status, overdraft_limit, _member_limit(member_limit), own_credits_first
    )
    if settings.empty():
        raise ValidationError(
            "give --tier, --status, --overdraft-limit, --member-limit or --own-credits-first"
        )

    async def exists(b: Backends) -> None:
        await b.engine.get_account(account_id)  # AccountNotFound: exit 2, nothing written

    run(exists, ledger=None)
    out = _upsert(account_id, settings, idempotency_key, must_be_new=False)
    _print_upsert(out, as_json)


async def _refuse_existing(b: Backends, account_id: str) -> None:
    try:
        await b.engine.get_account(account_id)
    except AccountNotFound:
        return
    raise ValidationError(
        f"account {account_id} already exists; change it with `quotagate accounts update`"
    )


@accounts.command()
@click.argument("account_id")
@json_option
def show(account_id: str, as_json: bool) -> None:
    """An account as Redis holds it now: balance, buckets, grants, holds."""

    async def work(b: Backends) -> Account:
        return await b.engine.get_account(account_id)

    account = run(work, ledger=None)
    if as_json:
        emit_json(_account_dict(account))
        return
    a = _account_dict(account)
    holds = a.pop("holds")
    a.pop("grants")
    member = a.pop("membership")
    if member is not None:  # a member of a pool: its pool, limit and use this period
        limit = "none" if member["member_limit"] is None else member["member_limit"]
        a.update(pool=member["pool_id"], member_limit=limit, pool_paid_this_period=member["used"],
                 own_credits_first=member["own_credits_first"])  # fmt: skip
    click.echo(fields(a))
    click.echo("\ngrants, in spend order:\n" + table([grant_row(g) for g in account.grants]))
    if holds:
        click.echo("\nopen holds:\n" + table(holds))


@accounts.command("list")
@click.option("--tier", help="Only accounts of this tier.")
@click.option("--status", type=click.Choice(["active", "banned"]))
@click.option("--pool", help="Only the members of this pool (accounts POOL~NAME).")
@click.option("--after", help="Start after this account id (the next page).")
@click.option("--limit", type=click.IntRange(1, LIST_MAX), default=50, show_default=True)
@json_option
def list_accounts(
    tier: str | None,
    status: str | None,
    pool: str | None,
    after: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Accounts the ledger knows, by id, with the live balance from Redis."""
    if pool is not None:
        check_account_id(pool)
        if pool_of(pool) is not None:
            raise ValidationError(f"{pool} is a member, not a pool: pools do not nest")

    async def work(b: Backends) -> list[dict[str, Any]]:
        assert b.ledger is not None
        with postgres_errors():
            async with b.ledger.pool.acquire() as conn:
                rows = await conn.fetch(
                    "SELECT account_id, tier, status, credits, created_at FROM user_credits"
                    " WHERE ($1::text IS NULL OR tier = $1)"
                    " AND ($2::text IS NULL OR status = $2)"
                    " AND ($3::text IS NULL OR account_id > $3)"
                    # starts_with, not LIKE: an id may hold _, a LIKE wildcard
                    " AND ($5::text IS NULL OR starts_with(account_id, $5 || '~'))"
                    " ORDER BY account_id LIMIT $4",
                    tier, status, after, limit, pool,
                )  # fmt: skip
        async with b.engine.redis.pipeline(transaction=False) as pipe:
            for r in rows:
                pipe.hmget(b.engine.keys.account(r["account_id"]).account, "m", "b", "r", "g")
            live = await pipe.execute()
        out = []
        for r, (m, b_, reserved, g) in zip(rows, live, strict=True):
            out.append(
                {
                    "account_id": r["account_id"],
                    "tier": r["tier"],
                    "status": r["status"],
                    "balance": None if m is None else stored_balance(m, b_, g),
                    "reserved": None if reserved is None else int(reserved),
                    "ledger_balance": int(r["credits"]),
                    "created_at": iso(r["created_at"]),
                }
            )
        return out

    rows = run(work)
    more = len(rows) == limit
    if as_json:
        emit_json({"accounts": rows, "next": rows[-1]["account_id"] if more else None})
        return
    click.echo(table(rows, ["account_id", "tier", "status", "balance", "reserved",
                            "ledger_balance", "created_at"]))  # fmt: skip
    if more:
        click.echo(f"\nmore: --after {rows[-1]['account_id']}")


@click.command()
@click.argument("account_id")
@click.argument("amount", type=int)
@click.option("--type", "kind", type=click.Choice(CREDIT_TYPES), default="grant",
              show_default=True, help="adjust takes a signed amount.")  # fmt: skip
@click.option("--refund-of", help="refund: the transaction id of the spend it returns.")
@click.option("--description", help="Shown in the history.")
@idempotency_option
@json_option
def grant(
    account_id: str,
    amount: int,
    kind: str,
    refund_of: str | None,
    description: str | None,
    idempotency_key: str | None,
    as_json: bool,
) -> None:
    """Add credits to an account (grant, earn, refund) or correct it (adjust, signed).

    A refund names the spend it returns (`--refund-of`), and all refunds of one spend return
    at most what it charged. A negative adjustment may not take available credits (balance
    minus held plus overdraft) below zero. Written through to the ledger before this
    returns; `durable: no` means PostgreSQL did not take it now and the flush will. A
    negative adjustment goes after `--`, options before it:
    `quotagate grant --type adjust ACCOUNT_ID -- -5`.
    """
    if amount < 0 and kind != "adjust":
        raise ValidationError(
            f"{_CREDIT_NAMES[kind]} adds credits; to take {-amount} away, make it an adjustment: "
            f"`quotagate grant --type adjust {account_id} -- {amount}`"
        )

    async def work(b: Backends) -> dict[str, Any]:
        assert b.ledger is not None
        engine = await ready_engine(b)
        if kind == "refund":
            result = await refund(
                engine, b.ledger, account_id, amount, refund_of, description=description,
                idempotency_key=idempotency_key,
            )  # fmt: skip
        else:
            result = await engine.credit(
                account_id, amount, kind, description=description,
                idempotency_key=idempotency_key, refund_of=refund_of,
            )  # fmt: skip
        durable = await b.ledger.write_through(engine, account_id, [result.outbox_entry_id])
        out = asdict(result)
        out.pop("outbox_entry_id")
        return {"account_id": account_id, "type": kind, "amount": amount, **out,
                "durable": durable}  # fmt: skip

    out = run(work)
    if as_json:
        emit_json(out)
        return
    click.echo(fields(out))


@click.command()
@click.argument("account_id")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--before", help="Continue after this transaction id (the next page).")
@json_option
def history(account_id: str, limit: int, before: str | None, as_json: bool) -> None:
    """An account's transactions, newest first; `pending` ones are not in the ledger yet."""

    async def work(b: Backends) -> HistoryPage:
        assert b.ledger is not None
        return await b.ledger.history(b.engine, account_id, limit=limit, before=before)

    page = run(work)
    # A pool's rows for a member's charges name who paid and for whom; when the page holds
    # any, every row has the two columns (a table's columns are its first row's).
    paid_by = any(t.member_id for t in page.transactions)
    rows = [
        {
            "id": t.id,
            "created_at": iso(t.created_at),
            "type": t.type,
            "amount": t.amount,
            "balance_after": t.balance_after,
            "resource": t.resource,
            "units": t.units,
            "description": t.description,
            "pending": t.pending,
            # a pool's row for a member's charge, in the pool's or the member's history
            **({"account_id": t.account_id, "member_id": t.member_id} if paid_by else {}),
            **({"metadata": t.metadata} if as_json else {}),
        }
        for t in page.transactions
    ]
    if as_json:
        emit_json({"transactions": rows, "next": page.next})
        return
    click.echo(table(rows))
    if page.next:
        click.echo(f"\nmore: --before {page.next}")


def register(cli: click.Group) -> None:
    for command in (accounts, grant, history):
        cli.add_command(command)
