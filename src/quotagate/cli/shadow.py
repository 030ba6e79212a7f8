"""`quotagate shadow report|reset`: what routes and resources in shadow mode would have
charged and refused, and starting their shadow balances again.

The report reads the ledger (``shadow_charges``, written by the flush); shadow charges still
in Redis are counted apart, as ``pending``: run `quotagate flush` first to include them.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from quotagate.cli.backends import Backends, run
from quotagate.cli.ops_support import iso, json_option
from quotagate.cli.output import emit_json, table
from quotagate.ids import check_account_id
from quotagate.ledger import shadow as sh
from quotagate.ledger.usage import parse_instant

COLUMNS = (
    "account_id", "resource", "requests", "charged", "charged_credits", "denied",
    "denied_credits", "denied_by",
)  # fmt: skip
DEFAULT_DAYS = 7


@click.group("shadow")
def shadow() -> None:
    """Shadow mode: routes (`shadow = true`) and resources (`[shadow] resources`) whose
    charges are decided and recorded, never charged."""


@shadow.command("report")
@click.argument("account_id", required=False)
@click.option("--from", "start", help=f"Start, ISO 8601 (default: {DEFAULT_DAYS} days ago).")
@click.option("--to", "end", help="End, excluded, ISO 8601 (default: now).")
@json_option
def report(account_id: str | None, start: str | None, end: str | None, as_json: bool) -> None:
    """Per account and resource: the requests, what would have been charged, and what would
    have been refused (with why)."""
    if account_id is not None:
        check_account_id(account_id)
    until = parse_instant(end, "to") if end else datetime.now(UTC)
    since = parse_instant(start, "from") if start else until - timedelta(days=DEFAULT_DAYS)
    if since >= until:
        raise click.BadParameter("--from must be before --to", param_hint="--from")

    async def work(b: Backends) -> tuple[list[sh.ShadowTotal], int]:
        assert b.ledger is not None
        totals = await sh.shadow_report(b.ledger, since, until, account_id=account_id)
        return totals, await sh.pending_shadow(b.engine)

    totals, pending = run(work)
    rows: list[dict[str, Any]] = [asdict(t) for t in totals]
    if as_json:
        emit_json({"from": iso(since), "to": iso(until), "rows": rows, "pending": pending})
        return
    for row in rows:
        row["denied_by"] = ", ".join(f"{k} {v}" for k, v in sorted(row["denied_by"].items()))
    if rows:
        click.echo(table(rows, list(COLUMNS)))
        sums = {c: sum(r[c] for r in rows) for c in COLUMNS[2:7]}
        click.echo("\nin all: " + ", ".join(f"{c} {v}" for c, v in sums.items()))
    else:
        click.echo(f"no shadow charges from {iso(since)} to {iso(until)}")
    if pending:
        click.echo(
            f"{pending} shadow charges are not in the ledger yet: `quotagate flush` adds them"
        )


@shadow.command("reset")
@click.argument("account_id", required=False)
@click.option("--all", "every", is_flag=True, help="Every account's shadow balance.")
@json_option
def reset(account_id: str | None, every: bool, as_json: bool) -> None:
    """Start shadow balances again from the accounts' real ones: one account's, or with
    --all every account's (for a new trial of a price). The recorded charges stay."""
    if (account_id is None) == (not every):
        raise click.UsageError("name one ACCOUNT_ID, or --all for every account")
    if account_id is not None:
        check_account_id(account_id)

    async def work(b: Backends) -> int:
        return await sh.reset_shadow(b.engine, account_id)

    cleared = run(work, ledger=None)
    if as_json:
        emit_json({"cleared": cleared})
    else:
        click.echo(f"cleared {cleared} shadow balance{'s' if cleared != 1 else ''}")


def register(cli: click.Group) -> None:
    cli.add_command(shadow)
