"""Redis down or hung: the hook answers within authz.timeout_ms with the configured policy.

A private Redis is stopped (and frozen with SIGSTOP) mid-test; the shared one is never touched.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
from tests.api.helpers import assert_problem, create_account
from tests.support.gateway import GatewayServer, gateway_settings, running_gateway
from tests.support.servers import RedisProcess, redis_process

from quotagate.config import parse_config

TIMEOUT_MS = 300


def config_text(mode: str) -> str:
    return f"""
[resources]
api_call = 1
[tiers.free]
credit_limit = 100
monthly_grant = 100
[authz]
timeout_ms = {TIMEOUT_MS}
failure_mode = "{mode}"
"""


@pytest.fixture
def stack(
    migrated_database_url: str, api_keys: dict[str, str]
) -> Iterator[tuple[RedisProcess, GatewayServer, GatewayServer]]:
    with redis_process(appendonly=True) as redis_server:
        settings = gateway_settings(redis_server.url, migrated_database_url, "qgdown")
        with (
            running_gateway(settings, parse_config(config_text("closed"))) as closed,
            running_gateway(settings, parse_config(config_text("open"))) as open_,
        ):
            try:
                yield redis_server, closed, open_
            finally:
                if redis_server.proc is not None:
                    with contextlib.suppress(ProcessLookupError):
                        redis_server.proc.send_signal(signal.SIGCONT)


def ask(
    gw: GatewayServer, api_keys: dict[str, str], acct: str, **extra: str
) -> tuple[httpx.Response, float]:
    headers = {
        "X-Quotagate-Key": api_keys["hook"],
        "X-Account-Id": acct,
        "X-Quota-Resource": "api_call",
        **{k.replace("_", "-"): v for k, v in extra.items()},
    }
    started = time.monotonic()
    r = httpx.get(f"{gw.url}/v1/authz", headers=headers, timeout=10)
    return r, time.monotonic() - started


def failures(gw: GatewayServer, policy: str) -> float:
    text = httpx.get(f"{gw.url}/metrics").text
    for line in text.splitlines():
        if line.startswith(f'quotagate_authz_backend_failures_total{{policy="{policy}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_redis_frozen_then_stopped(
    stack: tuple[RedisProcess, GatewayServer, GatewayServer], api_keys: dict[str, str]
) -> None:
    redis_server, closed, open_ = stack
    with httpx.Client(base_url=closed.url) as http:
        acct = create_account(http, api_keys["admin"], tier="free")
    assert ask(closed, api_keys, acct)[0].headers["x-quota-remaining"] == "99"
    assert ask(open_, api_keys, acct)[0].headers["x-quota-remaining"] == "98"
    # The timeout plus HTTP, 16 client threads and two gateways sharing one process on a busy
    # machine. Without the hook's own bound a frozen Redis would hold each request for the
    # client's socket timeout (5 s), so this still tells a bounded answer from a hang.
    bound = TIMEOUT_MS / 1000 + 2.0
    assert redis_server.proc is not None

    # Frozen: connections open, nothing answers. Many requests at once, none hangs.
    redis_server.proc.send_signal(signal.SIGSTOP)
    before = failures(closed, "closed"), failures(open_, "open")
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda gw: ask(gw, api_keys, acct), [closed, open_] * 8))
    for i, (r, elapsed) in enumerate(results):
        assert elapsed < bound, elapsed
        if i % 2 == 0:
            assert_problem(r, 503, "backend_unavailable")
            assert r.headers["x-quota-reason"] == "backend_unavailable"
        else:
            assert r.status_code == 200
            assert r.headers["x-quota-degraded"] == "1"
            assert r.headers["x-quota-account"] == acct
    assert failures(closed, "closed") == before[0] + 8
    assert failures(open_, "open") == before[1] + 8
    redis_server.proc.send_signal(signal.SIGCONT)

    # Stopped: connections refused.
    redis_server.stop()
    for gw, status in ((closed, 503), (open_, 200)):
        r, elapsed = ask(gw, api_keys, acct)
        assert elapsed < bound and r.status_code == status, (elapsed, r.text)
        # A reservation takes the same policy; let through open, it holds nothing to settle.
        r, elapsed = ask(gw, api_keys, acct, X_Quota_Mode="reserve")
        assert elapsed < bound and r.status_code == status, (elapsed, r.text)
        assert "x-quota-hold-id" not in r.headers
        if status == 200:
            assert r.headers["x-quota-degraded"] == "1"
    assert httpx.get(f"{closed.url}/readyz").json()["redis"] == "down"
    # The service API says so too, as a problem, quickly.
    started = time.monotonic()
    r = httpx.post(
        f"{closed.url}/v1/accounts/{acct}/consume",
        json={"resource": "api_call"},
        headers={"Authorization": f"Bearer {api_keys['service']}"},
        timeout=10,
    )
    assert_problem(r, 503, "backend_unavailable")
    assert time.monotonic() - started < 2

    # Back (AOF kept the data): charging resumes. A frozen Redis runs the scripts it had
    # received once it thaws, so some of the 16 requests answered "no" or "degraded" may have
    # been charged after all; they are in the outbox like any charge, never lost or doubled.
    time.sleep(1.1)  # AOF everysec
    redis_server.start()
    r, _ = ask(closed, api_keys, acct)
    assert r.status_code == 200, r.text
    assert 97 - 16 <= int(r.headers["x-quota-remaining"]) <= 97
