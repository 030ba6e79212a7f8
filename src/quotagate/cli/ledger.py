"""Ledger commands: migrate the schema, run a worker, flush now, show the lag.

quotagate migrate            apply the packaged migrations
quotagate worker [--burst]   an RQ worker on the flush and jobs queues
quotagate flush [--json]     flush every partition now, and wait until done
quotagate status [--json]    entries waiting per partition, oldest's age, last flush
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click

from quotagate.cli.output import emit_json, table
from quotagate.cli.pgserver import database_name, ensure_database
from quotagate.engine import CreditEngine
from quotagate.engine.routing import MIN_PARTITIONS_PER_MASTER
from quotagate.errors import BackendUnavailable
from quotagate.ledger import Ledger, flush_all, outbox_lag, quarantine
from quotagate.ledger.migrate import head_revision, upgrade
from quotagate.ledger.outbox import check_layout
from quotagate.settings import Settings, redact

if TYPE_CHECKING:
    from quotagate.jobs.runtime import WorkerRuntime

T = TypeVar("T")


def register(cli: click.Group) -> None:
    for command in (migrate, worker, flush, status):
        cli.add_command(command)


def _with_backends(settings: Settings, work: Callable[[CreditEngine, Ledger], Awaitable[T]]) -> T:
    async def main() -> T:
        engine = CreditEngine.from_url(
            str(settings.redis_url), settings.load_config(), prefix=settings.key_prefix
        )
        ledger = await Ledger.connect(str(settings.database_url), max_connections=4)
        try:
            return await work(engine, ledger)
        finally:
            await ledger.aclose()
            await engine.aclose()

    return asyncio.run(main())


@click.command()
def migrate() -> None:
    """Apply the ledger's migrations to QUOTAGATE_DATABASE_URL (safe to run again).

    Creates the database first when it does not exist and the role may create databases.
    """
    settings = Settings.locate()
    if ensure_database(settings):
        click.echo(f"created the database {database_name(str(settings.database_url))}")
    upgrade(str(settings.database_url))
    click.echo(f"ledger database at revision {head_revision()} (current)")


@click.command()
@click.option("--burst", is_flag=True, help="Stop when the queues are empty.")
@click.option("--with-scheduler", is_flag=True, help="Also run RQ's scheduler for delayed jobs.")
@click.option("--name", default=None, help="Worker name (default: random).")
def worker(burst: bool, with_scheduler: bool, name: str | None) -> None:
    """Run an RQ worker on the flush queue, then the jobs queue.

    Refuses to start on a ledger database that is behind. Jobs run in this process
    (no fork per job), reusing one event loop, Redis client and PostgreSQL pool.
    """
    from quotagate.jobs import queues, runtime
    from quotagate.jobs.worker import LedgerWorker

    settings = Settings.from_env()
    rt = runtime.install(settings)
    rt.run(_check_ready(rt))
    conn = queues.connection(settings)
    w = LedgerWorker(queues.worker_queues(settings, conn), connection=conn, name=name)
    w.work(burst=burst, with_scheduler=with_scheduler, logging_level="INFO")


async def _check_ready(rt: WorkerRuntime) -> None:
    ledger = await rt.ledger()
    await ledger.ensure_current()
    engine = await rt.engine()
    try:
        await engine.redis.ping()
    except Exception as exc:
        raise BackendUnavailable(
            f"Redis at {redact(str(rt.settings.redis_url))} did not answer: {exc}"
        ) from None
    await check_layout(engine)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def flush(as_json: bool) -> None:
    """Flush every partition's outbox into the ledger now, and wait until done."""
    settings = Settings.from_env()
    started = time.monotonic()

    async def work(engine: CreditEngine, ledger: Ledger) -> list[Any]:
        await ledger.ensure_current()
        await check_layout(engine)
        return await flush_all(
            engine, ledger, batch_size=settings.flush_batch_size,
            lease_seconds=settings.flush_lease_seconds,
        )  # fmt: skip

    results = _with_backends(settings, work)
    rows = [
        {"partition": r.partition, "batches": r.batches, "inserted": r.inserted,
         "duplicates": r.duplicates, "events": r.events, "deleted": r.deleted}
        for r in results if r.batches
    ]  # fmt: skip
    summary = {
        "partitions": len(results),
        "inserted": sum(r.inserted for r in results),
        "duplicates": sum(r.duplicates for r in results),
        "events": sum(r.events for r in results),
        "deleted": sum(r.deleted for r in results),
        "quarantined": sum(r.quarantined for r in results),
        "seconds": round(time.monotonic() - started, 3),
    }
    if as_json:
        emit_json({**summary, "flushed": rows})
        return
    if rows:
        click.echo(table(rows))
    click.echo(
        f"flushed {summary['inserted']} transactions ({summary['duplicates']} already in the "
        f"ledger) and {summary['events']} account events in {summary['seconds']} s"
    )
    if summary["quarantined"]:
        click.echo(f"{summary['quarantined']} entries quarantined (see ledger_quarantine)")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option(
    "--all", "show_all", is_flag=True, help="List every partition, not only those waiting."
)
def status(as_json: bool, show_all: bool) -> None:
    """Entries waiting in each outbox, the oldest's age, and each partition's last flush."""
    settings = Settings.from_env()

    async def work(engine: CreditEngine, ledger: Ledger) -> dict[str, Any]:
        lag = await outbox_lag(engine)
        try:
            states: dict[int, Any] | None = await ledger.flush_states()
            quarantined: int | None = await quarantine.count(ledger.pool)
        except BackendUnavailable:
            states = quarantined = None
        now = datetime.now(UTC)
        parts = [
            {
                "partition": p.partition,
                "waiting": p.entries,
                "oldest_age_seconds": p.oldest_age_seconds,
                "last_flush_seconds_ago": (
                    round((now - states[p.partition].flushed_at).total_seconds(), 3)
                    if states and p.partition in states
                    else None
                ),
            }
            for p in lag.partitions
        ]
        return {
            "waiting": lag.total,
            "oldest_age_seconds": lag.oldest_age_seconds,
            "database": "unavailable" if states is None else "ok",
            "quarantined": quarantined,
            "partitions": parts,
            "masters": _per_master(await engine.partition_masters(), parts),
        }

    report = _with_backends(settings, work)
    if as_json:
        emit_json(report)
        return
    _show_masters(report["masters"], len(report["partitions"]))
    shown = [p for p in report["partitions"] if show_all or p["waiting"]]
    if shown:
        click.echo(table(shown))
    if report["quarantined"]:
        click.echo(f"{report['quarantined']} entries in ledger_quarantine")
    oldest = report["oldest_age_seconds"]
    age = f", oldest {oldest:.1f} s old" if oldest is not None else ""
    click.echo(
        f"{report['waiting']} entries waiting in {len(report['partitions'])} partitions{age}"
    )
    if report["database"] != "ok":
        click.echo("PostgreSQL did not answer: last flush times unknown", err=True)


def _per_master(masters: dict[int, str] | None, parts: list[dict[str, Any]]) -> list[Any] | None:
    """Partitions and entries waiting on each master of a cluster (None on a single Redis)."""
    if masters is None:
        return None
    rows: dict[str, dict[str, Any]] = {}
    for part in parts:
        address = masters[part["partition"]]
        row = rows.setdefault(address, {"master": address, "partitions": 0, "waiting": 0})
        row["partitions"] += 1
        row["waiting"] += part["waiting"]
    return sorted(rows.values(), key=lambda row: str(row["master"]))


def _show_masters(masters: list[dict[str, Any]] | None, partitions: int) -> None:
    if masters is None:
        return
    click.echo(table(masters))
    if partitions < MIN_PARTITIONS_PER_MASTER * len(masters):
        click.echo(
            f"warning: {partitions} partitions over {len(masters)} masters is fewer than "
            f"{MIN_PARTITIONS_PER_MASTER} per master: load spreads unevenly; set partitions "
            f"to at least {MIN_PARTITIONS_PER_MASTER * len(masters)} (a new deployment: the "
            "count is fixed once data is written)",
            err=True,
        )
