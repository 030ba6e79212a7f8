"""`quotagate scheduler`: RQ's cron scheduler with quotagate's recurring jobs.

It enqueues; workers (`quotagate worker`) run. One scheduler per deployment is enough; a
second one would enqueue everything twice (harmless: every job is idempotent, flushes are
deduplicated, but wasteful). The schedule, with its cron expressions, is in
quotagate.jobs.schedule and the README.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import click

from quotagate.settings import Settings, redact

SCHEDULE_MODULE = "quotagate.jobs.schedule"


@click.command()
@click.option(
    "--logging-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default=None,
    help="Log level [QUOTAGATE_LOG_LEVEL, the config file's [logs] level: INFO].",
)
def scheduler(logging_level: str | None) -> None:
    """Enqueue the recurring jobs on QUOTAGATE_QUEUE_URL: flush (1 s), hold expiry (5 s),
    renewal (daily 00:15 UTC, once a month per account), reconciliation report (03:30 UTC).

    Runs until SIGINT or SIGTERM; a Redis outage of any length is waited out.
    """
    from redis import exceptions as redis_errors
    from rq.cron import CronScheduler
    from rq.exceptions import StopRequested

    from quotagate.errors import BackendUnavailable
    from quotagate.jobs import queues
    from quotagate.jobs.worker import through_outages
    from quotagate.logs import configure

    # rq cron reads cron expressions in local time; ours are UTC.
    os.environ["TZ"] = "UTC"
    time.tzset()
    settings = Settings.from_env()
    log_format, log_level = settings.logging(settings.load_config())  # a bad config fails here
    level = (logging_level or log_level).lower()
    configure(log_format, level)
    conn = queues.connection(settings)
    try:
        conn.ping()
    except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
        url = redact(str(settings.queue_url))
        raise BackendUnavailable(f"the queue Redis at {url} did not answer: {exc}") from None

    class Scheduler(CronScheduler):
        """rq's cron scheduler, which remembers that a signal asked it to stop."""

        stop_requested = False

        def _request_stop(self, signum: int, frame: Any) -> None:
            self.stop_requested = True
            super()._request_stop(signum, frame)  # type: ignore[no-untyped-call]

    cron = Scheduler(connection=conn, logging_level=level.upper())
    cron.load_config_from_file(SCHEDULE_MODULE)

    def run() -> None:
        try:
            cron.start()  # type: ignore[no-untyped-call]
        except redis_errors.RedisError:
            # Stopping, rq tells Redis the scheduler is gone. When Redis stops at the same
            # time (compose down, or `up` killed) that fails: still a stop, not an outage.
            if not cron.stop_requested:
                raise

    with contextlib.suppress(StopRequested):  # SIGTERM while waiting for Redis
        # rq cron ends its loop on any Redis error: start it again once Redis is back.
        through_outages(conn, "scheduler", run)


def register(cli: click.Group) -> None:
    cli.add_command(scheduler)
