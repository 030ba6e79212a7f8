"""The early flush: the gateway looks at an outbox's length only every CHECK_EVERY writes to
its partition (no round trip added to a charge), and enqueues a flush past the threshold."""

from __future__ import annotations

import dataclasses

import httpx
import redis
from tests.api.helpers import bearer, create_account
from tests.support.gateway import gateway_settings, running_gateway
from tests.support.servers import redis_process

from quotagate.api.flush_trigger import CHECK_EVERY
from quotagate.engine.keys import flush_queued_flag
from quotagate.jobs import queues


def xlen_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_xlen", {}).get("calls", 0))


def test_early_flush_checks_every_n_writes(
    migrated_database_url: str, api_keys: dict[str, str]
) -> None:
    with redis_process() as server:
        settings = gateway_settings(server.url, migrated_database_url, "qgtrig")
        settings = dataclasses.replace(settings, flush_trigger_entries=CHECK_EVERY + 1)
        client = redis.Redis.from_url(server.url)
        with running_gateway(settings) as gw, httpx.Client(base_url=gw.url) as http:
            acct = create_account(http, api_keys["admin"])  # 2 outbox entries: event and grant
            service = bearer(api_keys["service"])
            before = xlen_calls(client)
            for _ in range(CHECK_EVERY - 1):
                r = http.post(
                    f"/v1/accounts/{acct}/consume", json={"resource": "api_call"}, headers=service
                )
                assert r.status_code == 200
            # CHECK_EVERY writes so far (the account's creation counted one): one look, and the
            # outbox (CHECK_EVERY + 1 entries) has reached the threshold.
            queue = queues.flush_queue(settings, client)
            for _ in range(50):
                if queue.count:
                    break
                http.get("/healthz")
            assert xlen_calls(client) - before == 1
            assert queue.count == 1
            assert client.exists(
                flush_queued_flag("qgtrig", gw.app.state.gateway.engine.keys.partition_of(acct))
            )
            metrics = http.get("/metrics").text
            assert "quotagate_flush_triggers_total 1.0" in metrics
            queue.empty()  # type: ignore[no-untyped-call]  # rq leaves it unannotated
        client.close()
