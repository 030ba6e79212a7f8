"""`quotagate usage [ACCOUNT_ID]`: credits spent, granted, refunded... per window.

With an account: its usage per window and resource (a pool's, with ``--group-by member``,
per member). Without: every account's, by resource or by account (those that spent most).
The same query as the HTTP API's usage endpoints, from the ledger's hourly rollup with the
outbox's pending transactions added.
"""

from __future__ import annotations

from typing import Any

import click

from quotagate.cli.backends import Backends, run
from quotagate.cli.ops_support import iso, json_option
from quotagate.cli.output import emit_json, table
from quotagate.ledger import usage as u

COLUMNS = (
    "window_start", "account_id", "resource", "member_id", "spent", "granted", "earned", "refunded",
    "expired", "adjusted", "units", "transactions", "pending",
)  # fmt: skip


def _rows(report: u.UsageReport) -> list[dict[str, Any]]:
    return [
        {c: iso(r.window_start) if c == "window_start" else getattr(r, c) for c in COLUMNS}
        for r in report.rows
    ]


@click.command("usage")
@click.argument("account_id", required=False)
@click.option("--from", "start", help="Start, ISO 8601 (default: a day, 30 days or a year ago).")
@click.option("--to", "end", help="End, excluded, ISO 8601 (default: now).")
@click.option(
    "--window", type=click.Choice(u.WINDOWS), default="day", show_default=True,
    help="UTC hours, days or months.",
)  # fmt: skip
@click.option(
    "--group-by", type=click.Choice(sorted({*u.GROUPS, *u.ACCOUNT_GROUPS})), default=None,
    help="Per resource (default); without ACCOUNT_ID per account; a pool's per member.",
)  # fmt: skip
@click.option(
    "--limit", type=click.IntRange(1, u.MAX_LIMIT), default=u.DEFAULT_LIMIT, show_default=True,
    help="Without ACCOUNT_ID: the groups that spent most.",
)  # fmt: skip
@json_option
def usage(
    account_id: str | None,
    start: str | None,
    end: str | None,
    window: str,
    group_by: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Usage per window: an account's per resource, or every account's (by resource or
    account). `pending` counts transactions still in the outbox, not yet in the ledger."""
    if account_id is not None and group_by == "account":
        raise click.UsageError(
            "--group-by account is for every account's usage: leave out ACCOUNT_ID"
        )
    if account_id is None and group_by == "member":
        raise click.UsageError("--group-by member is a pool's: give the pool's ACCOUNT_ID")
    span = u.UsageRange.parse(start, end, window)

    async def work(b: Backends) -> u.UsageReport:
        assert b.ledger is not None
        if account_id is not None:
            await b.engine.get_account(account_id)  # an unknown account fails, in one line
            by: u.AccountGroupBy = "member" if group_by == "member" else "resource"
            return await u.account_usage(b.engine, b.ledger, account_id, span, group_by=by)
        grouping: u.GroupBy = "account" if group_by == "account" else "resource"
        return await u.all_usage(b.engine, b.ledger, span, group_by=grouping, limit=limit)

    report = run(work)
    rows = _rows(report)
    if as_json:
        emit_json({
            "from": iso(span.start), "to": iso(span.end), "window": span.window,
            "group_by": report.group_by, "rows": rows, "pending": report.pending,
            "pending_complete": report.pending_complete,
        })  # fmt: skip
        return
    shown = [c for c in COLUMNS if any(r[c] for r in rows) or c in ("window_start", "spent")]
    click.echo(table(rows, shown))
    if not report.pending_complete:
        click.echo("\nan outbox held more than was read: some pending transactions are missing")


def register(cli: click.Group) -> None:
    cli.add_command(usage)
