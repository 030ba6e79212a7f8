"""The recurring jobs: the config module ``rq cron`` loads (``quotagate scheduler`` runs it).

    what                    when                queue   job (in quotagate.jobs)
    flush every partition   every 1 s           flush   flush.enqueue_flushes
    expire holds, grants    every 5 s           flush   expire.expire_holds
    monthly renewal         cron "15 0 * * *"   jobs    renew.renew_all
    reconciliation report   cron "30 3 * * *"   jobs    reconcile.reconcile_report
    webhook deliveries      every 2 s           jobs    webhooks.deliver_webhooks

Cron expressions are UTC: ``quotagate scheduler`` runs with TZ=UTC (rq cron reads them in
the process's local time). Renewal runs daily: a partition renewed for the month is skipped
at the cost of one GET, so the renewal happens on the 1st at 00:15, and a scheduler that was
down then catches up the next day. The reconciliation report repairs nothing: it logs every
drift (warnings of ``quotagate.jobs.reconcile``) and keeps its report as the job's result.

The expiry sweep rides the flush queue, which workers serve first: it is short and
time-bound like a flush, and a long renewal or reconciliation on the jobs queue never
delays it. Frequent jobs carry a short ``ttl``: a worker that was away does not come back to
a pile of stale copies.
"""

from __future__ import annotations

from rq import cron

from quotagate.engine.keys import cron_job_name
from quotagate.jobs import queues
from quotagate.jobs.expire import expire_holds
from quotagate.jobs.flush import enqueue_flushes
from quotagate.jobs.reconcile import reconcile_report
from quotagate.jobs.renew import renew_all
from quotagate.jobs.webhooks import deliver_webhooks
from quotagate.settings import Settings

FLUSH_INTERVAL_SECONDS = 1
EXPIRY_INTERVAL_SECONDS = 5
WEBHOOK_INTERVAL_SECONDS = 2
RENEWAL_CRON = "15 0 * * *"
RECONCILIATION_CRON = "30 3 * * *"

FREQUENT_RESULT_TTL_SECONDS = 60
DAILY_RESULT_TTL_SECONDS = 7 * 86400
DAILY_JOB_TIMEOUT_SECONDS = 6 * 3600


def register_all(settings: Settings) -> None:
    """Register every recurring job for the deployment named by ``settings`` (its prefix)."""
    fast = queues.flush_queue_name(settings.key_prefix)
    slow = queues.jobs_queue_name(settings.key_prefix)
    cron.register(
        enqueue_flushes, queue_name=fast, interval=FLUSH_INTERVAL_SECONDS,
        ttl=5 * FLUSH_INTERVAL_SECONDS, result_ttl=FREQUENT_RESULT_TTL_SECONDS,
        name=cron_job_name(settings.key_prefix, "flush"),
    )  # fmt: skip
    cron.register(
        expire_holds, queue_name=fast, interval=EXPIRY_INTERVAL_SECONDS,
        ttl=2 * EXPIRY_INTERVAL_SECONDS, result_ttl=FREQUENT_RESULT_TTL_SECONDS,
        name=cron_job_name(settings.key_prefix, "expire-holds"),
    )  # fmt: skip
    cron.register(
        deliver_webhooks, queue_name=slow, interval=WEBHOOK_INTERVAL_SECONDS,
        ttl=5 * WEBHOOK_INTERVAL_SECONDS, result_ttl=FREQUENT_RESULT_TTL_SECONDS,
        name=cron_job_name(settings.key_prefix, "webhooks"),
    )  # fmt: skip
    cron.register(
        renew_all, queue_name=slow, cron=RENEWAL_CRON, result_ttl=DAILY_RESULT_TTL_SECONDS,
        name=cron_job_name(settings.key_prefix, "renewal"),
    )  # fmt: skip
    cron.register(
        reconcile_report, queue_name=slow, cron=RECONCILIATION_CRON,
        job_timeout=DAILY_JOB_TIMEOUT_SECONDS, result_ttl=DAILY_RESULT_TTL_SECONDS,
        name=cron_job_name(settings.key_prefix, "reconciliation"),
    )  # fmt: skip


register_all(Settings.from_env())
