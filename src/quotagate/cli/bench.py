"""`quotagate bench`: the benchmark (its method and results: docs/benchmark.md)."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace
from typing import Any

import asyncpg
import click
import redis

from quotagate.bench.runner import ALL_GROUPS, Options, run
from quotagate.cli.output import emit_json
from quotagate.errors import BackendUnavailable
from quotagate.settings import Settings, redact


def _event_loop_runner() -> Any:
    """uvloop when installed (as the gateway runs), else asyncio's own loop."""
    try:
        import uvloop

        return uvloop.run
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.run


@click.command("bench")
@click.option("--quick", is_flag=True, help="Every scenario briefly (under two minutes in all).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document.")
@click.option("--duration", type=click.FloatRange(0.5, 600), help="Measured seconds per scenario.")
@click.option("--warmup", type=click.FloatRange(0, 60), help="Unmeasured seconds before each.")
@click.option("--concurrency", type=click.IntRange(1, 1000), help="Connections / tasks (50).")
@click.option("--workers", type=click.IntRange(1, 64), help="uvicorn workers (default: cores).")
@click.option(
    "--generator",
    type=click.Choice(["auto", "wrk", "pyload"]),
    default="auto",
    show_default=True,
    help="HTTP load generator: wrk when installed, else our own asyncio client.",
)
@click.option("--accounts", type=click.IntRange(1, 1_000_000), help="Spread accounts (100000).")
@click.option(
    "--rounds",
    type=click.IntRange(1, 20),
    help="Measure everything this many times; report the median round (1).",
)
@click.option("--rows", type=click.IntRange(1000, 10_000_000), help="Rows for the flush (100000).")
@click.option(
    "--only",
    type=click.Choice(ALL_GROUPS),
    multiple=True,
    help="Run only these scenario groups (repeatable).",
)
@click.option(
    "--cluster",
    is_flag=True,
    help="The engine and the hook on an embedded 3-master Redis Cluster next to one Redis "
    "(alone, or with the groups of --only).",
)
def bench(
    quick: bool,
    as_json: bool,
    duration: float | None,
    warmup: float | None,
    concurrency: int | None,
    workers: int | None,
    generator: str,
    accounts: int | None,
    rounds: int | None,
    rows: int | None,
    only: tuple[str, ...],
    cluster: bool,
) -> None:
    """Measure the hot path against its baselines, on loopback, and print one table.

    Uses QUOTAGATE_REDIS_URL and QUOTAGATE_DATABASE_URL (its own key prefix and its own
    database, both removed afterwards). Each row is compared with a baseline of the same run.
    """
    options = Options.quick() if quick else Options()
    changes: dict[str, Any] = {
        "duration_s": duration,
        "warmup_s": warmup,
        "concurrency": concurrency,
        "workers": workers,
        "generator": generator,
        "spread_accounts": accounts,
        "rounds": rounds,
        "flush_rows": rows,
        "groups": _groups(only, cluster),
    }
    options = replace(options, **{k: v for k, v in changes.items() if v is not None})
    settings = Settings.from_env()
    try:
        report = _event_loop_runner()(
            run(
                options,
                redis_url=str(settings.redis_url),
                database_url=str(settings.database_url),
                progress=lambda line: click.echo(line, err=True),
            )
        )
    except asyncio.CancelledError:  # SIGTERM: the stage was taken down on the way out
        click.echo("stopped", err=True)
        sys.exit(143)
    except (OSError, redis.ConnectionError, asyncpg.PostgresConnectionError) as exc:
        raise BackendUnavailable(f"the benchmark stopped: {redact(str(exc))}") from None
    except (RuntimeError, asyncpg.PostgresError, redis.RedisError) as exc:
        raise click.ClickException(f"the benchmark stopped: {redact(str(exc))}") from None
    if as_json:
        emit_json(report.as_json())
    else:
        click.echo(report.render())
    if any(r.errors for r in report.rows):
        sys.exit(1)


def _groups(only: tuple[str, ...], cluster: bool) -> tuple[str, ...] | None:
    """The groups asked for, in their order; None: the default ones."""
    asked = {*only, "cluster"} if cluster else set(only)
    return tuple(g for g in ALL_GROUPS if g in asked) or None


def register(cli: click.Group) -> None:
    cli.add_command(bench)
