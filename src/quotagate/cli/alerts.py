"""`quotagate alerts`, `quotagate webhooks deliveries|redeliver`: what the flush raised, and
what became of its webhooks. Endpoints themselves are set over the HTTP API (admin)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import click

from quotagate.alerts import store, webhooks
from quotagate.cli.backends import Backends, run
from quotagate.cli.ops_support import iso, json_option
from quotagate.cli.output import emit_json, table


@click.command("alerts")
@click.option("--account", "account_id", help="Only this account's.")
@click.option("--kind", type=click.Choice(store.KINDS), help="Only alerts of this kind.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_option
def alerts(account_id: str | None, kind: str | None, limit: int, as_json: bool) -> None:
    """Alerts, newest first: balance thresholds, expiring credits, unusual consumption."""

    async def work(b: Backends) -> list[store.Alert]:
        assert b.ledger is not None
        return await store.list_alerts(b.ledger, limit=limit, account_id=account_id, kind=kind)

    rows = [{**asdict(a), "created_at": iso(a.created_at)} for a in run(work)]
    if as_json:
        emit_json({"alerts": rows})
        return
    shown = [{**r, "details": _details(r["details"])} for r in rows]
    click.echo(table(shown, ["id", "created_at", "kind", "account_id", "details"]))


def _details(details: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(details.items()) if v is not None)


@click.group("webhooks")
def webhooks_group() -> None:
    """Webhook deliveries of alerts: list them, send them again."""


@webhooks_group.command("deliveries")
@click.option("--status", type=click.Choice(["pending", "delivered", "dead"]))
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_option
def deliveries(status: str | None, limit: int, as_json: bool) -> None:
    """Deliveries newest first, with their tries and last outcome."""

    async def work(b: Backends) -> list[webhooks.Delivery]:
        assert b.ledger is not None
        return await webhooks.list_deliveries(b.ledger, status=status, limit=limit)

    rows = [
        {**asdict(d), "next_attempt_at": iso(d.next_attempt_at),
         "delivered_at": iso(d.delivered_at)}
        for d in run(work)
    ]  # fmt: skip
    if as_json:
        emit_json({"deliveries": rows})
        return
    columns = ["id", "event", "alert_id", "status", "attempts", "last_status", "last_error"]
    click.echo(table(rows, columns))


@webhooks_group.command("redeliver")
@click.argument("delivery_ids", nargs=-1)
@click.option("--dead", "all_dead", is_flag=True, help="Every dead delivery.")
@json_option
def redeliver(delivery_ids: tuple[str, ...], all_dead: bool, as_json: bool) -> None:
    """Send deliveries again from their first try (the next delivery job sends them)."""
    if not delivery_ids and not all_dead:
        raise click.UsageError("name the deliveries to send again, or --dead for every dead one")

    async def work(b: Backends) -> int:
        assert b.ledger is not None
        return await webhooks.redeliver(b.ledger, delivery_ids, all_dead=all_dead)

    count = run(work)
    if as_json:
        emit_json({"redelivered": count})
        return
    click.echo(f"{count} deliveries queued again")


def register(cli: click.Group) -> None:
    cli.add_command(alerts)
    cli.add_command(webhooks_group)
