"""The webhook delivery job: sends the alerts' due deliveries (``quotagate.alerts.webhooks``).

Scheduled every few seconds on the jobs queue (``quotagate.jobs.schedule``). Each run sends
rounds of due deliveries until none is due or its time budget is spent; a round takes at most
the configured timeout, whatever the endpoints do, so the worker is back for the flush queue
(served first) within seconds.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from quotagate.alerts.webhooks import DeliveryRound, deliver_due
from quotagate.jobs import runtime

TIME_BUDGET_SECONDS = 10.0
"""A run starts no new round after this long."""


def deliver_webhooks() -> dict[str, int]:
    """RQ job: send the due webhook deliveries."""
    rt = runtime.current()
    policy = rt.config.alerts.webhooks

    async def work() -> DeliveryRound:
        ledger = await rt.ledger()
        total = DeliveryRound()
        deadline = time.monotonic() + TIME_BUDGET_SECONDS
        while time.monotonic() < deadline:
            sent = await deliver_due(ledger, policy)
            if not sent.sent:
                break
            total.delivered += sent.delivered
            total.retried += sent.retried
            total.dead += sent.dead
        return total

    return asdict(rt.run(work()))
