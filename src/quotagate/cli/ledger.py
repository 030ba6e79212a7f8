"""Ledger commands: migrate the schema, run a worker, flush now, show the lag.

quotagate migrate            apply the packaged migrations
quotagate worker [--burst]   an RQ worker on the flush and jobs queues
quotagate flush [--json]     flush every partition now, and wait until done
quotagate status [--json]    entries waiting per partition, oldest's age, last flush
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import click

from quotagate.cli.backends import Backends, run
from quotagate.cli.output import emit_json, table
from quotagate.cli.pgserver import database_name, ensure_database
from quotagate.engine.routing import MIN_PARTITIONS_PER_MASTER
from quotagate.errors import BackendUnavailable
from quotagate.ledger import flush_all, outbox_lag, quarantine
from quotagate.ledger.migrate import head_revision, upgrade
from quotagate.ledger.outbox import check_layout
from quotagate.settings import Settings, redact

if TYPE_CHECKING:
    from quotagate.jobs.runtime import WorkerRuntime


def register(cli: click.Group) -> None:
    for command in (migrate, worker, flush, status):
        cli.add_command(command)


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
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve this worker's Prometheus metrics (flush errors, quarantine, webhooks) here.",
)
@click.option(
    "--metrics-host", default="127.0.0.1", show_default=True, help="Address of --metrics-port."
)
def worker(
    burst: bool, with_scheduler: bool, name: str | None, metrics_port: int | None,
    metrics_host: str,
) -> None:  # fmt: skip
    """Run an RQ worker on the flush queue, then the jobs queue.

    Refuses to start on a ledger database that is behind. Started while PostgreSQL is down,
    it waits for it (as it rides out an outage later); with --burst it stops with exit 3.
    Jobs run in this process (no fork per job), reusing one event loop, Redis client and
    PostgreSQL pool.
    """
    from quotagate.jobs import queues, runtime
    from quotagate.jobs.worker import LedgerWorker
    from quotagate.logs import configure

    settings = Settings.from_env()
    log_format, log_level = settings.logging(settings.load_config())
    configure(log_format, log_level)
    rt = runtime.install(settings)
    rt.run(_check_ready(rt) if burst else _wait_until_ready(rt))
    if metrics_port is not None:
        from quotagate.metrics import serve_http

        serve_http(metrics_host, metrics_port)  # a daemon thread: it ends with the worker
    conn = queues.connection(settings)
    w = LedgerWorker(queues.worker_queues(settings, conn), connection=conn, name=name)
    w.work(burst=burst, with_scheduler=with_scheduler, logging_level=log_level.upper())


async def _check_ready(rt: WorkerRuntime) -> None:
    await _check_ledger(rt)
    await _check_redis(rt)


async def _check_ledger(rt: WorkerRuntime) -> None:
    ledger = await rt.ledger()
    await ledger.ensure_current()


async def _check_redis(rt: WorkerRuntime) -> None:
    engine = await rt.engine()
    try:
        await engine.redis.ping()
    except Exception as exc:
        raise BackendUnavailable(
            f"Redis at {redact(str(rt.settings.redis_url))} did not answer: {exc}"
        ) from None
    await check_layout(engine)


POSTGRES_WAIT_FIRST_SECONDS = 0.5
POSTGRES_WAIT_MAX_SECONDS = 5.0
"""Waits between attempts to reach PostgreSQL at start: doubling from the first to the max."""


async def _wait_until_ready(rt: WorkerRuntime) -> None:
    """:func:`_check_ready`, with the ledger's part tried until PostgreSQL answers: one line
    when it does not, one when it does (a database that is missing or behind still stops
    the worker)."""
    delay, started = POSTGRES_WAIT_FIRST_SECONDS, time.monotonic()
    waited = False
    while True:
        try:
            await _check_ledger(rt)
        except BackendUnavailable as exc:
            if isinstance(exc.__cause__, asyncpg.InvalidCatalogNameError):
                raise  # the server answers: waiting will not make the database
            if not waited:
                click.echo(f"waiting for PostgreSQL to answer ({exc}); retrying", err=True)
                waited = True
            await asyncio.sleep(delay)
            delay = min(POSTGRES_WAIT_MAX_SECONDS, delay * 2)
            continue
        if waited:
            click.echo(f"PostgreSQL answers after {time.monotonic() - started:.0f} s", err=True)
        await _check_redis(rt)
        return


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def flush(as_json: bool) -> None:
    """Flush every partition's outbox into the ledger now, and wait until done."""
    started = time.monotonic()

    async def work(b: Backends) -> list[Any]:
        assert b.ledger is not None
        await check_layout(b.engine)
        return await flush_all(
            b.engine, b.ledger, batch_size=b.settings.flush_batch_size,
            lease_seconds=b.settings.flush_lease_seconds,
        )  # fmt: skip

    results = run(work)
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

    async def work(b: Backends) -> dict[str, Any]:
        assert b.ledger is not None
        lag = await outbox_lag(b.engine)
        try:
            states: dict[int, Any] | None = await b.ledger.flush_states()
            quarantined: int | None = await quarantine.count(b.ledger.pool)
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
            "masters": _per_master(await b.engine.partition_masters(), parts),
        }

    report = run(work, ledger="unchecked")  # without PostgreSQL it still shows the outboxes
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
