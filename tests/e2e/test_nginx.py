"""nginx `auth_request` in front of an upstream, with examples/nginx as its configuration."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Mapping

import httpx
import pytest
from tests.e2e.harness import (
    EXAMPLES,
    Hit,
    Services,
    Upstream,
    auth,
    behind_proxy,
    e2e_config_text,
    open_accounts,
    proxy_charges_until_the_credits_run_out,
    proxy_reserves_and_the_app_settles_the_actual_cost,
    reserve_config_text,
)
from tests.e2e.proxies import NGINX, nginx_in_front
from tests.support.servers import redis_process

pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (.ci/run installs it)"
)

NGINX_AUTHZ = EXAMPLES / "nginx" / "quotagate.toml"
"""The example's [authz] statuses: nginx's auth_request passes on only 401 and 403."""


async def test_nginx_charges_until_the_credits_run_out(
    services: Services, upstream: Upstream
) -> None:
    config = e2e_config_text(NGINX_AUTHZ)
    assert "deny_status = 403" in config and "rate_limited_status = 403" in config
    await proxy_charges_until_the_credits_run_out(
        services, nginx_in_front, upstream, authz_from=NGINX_AUTHZ
    )


async def test_nginx_answers_503_when_redis_is_down_and_never_calls_the_app(
    services: Services, upstream: Upstream
) -> None:
    config = e2e_config_text(NGINX_AUTHZ)
    with redis_process() as private:
        engine = await services.make_engine(config, url=private.url)
        await open_accounts(engine)
        with behind_proxy(
            services, nginx_in_front, upstream, config, redis_url=private.url
        ) as stack:  # fmt: skip
            async with httpx.AsyncClient(base_url=stack.base_url, timeout=10) as client:
                ok = await client.get("/api/things/1", auth=auth("alice"))
                assert ok.status_code == 200, ok.text
                private.stop()
                started = time.monotonic()
                # The hook fails closed (503); auth_request turns that into a 500, which the
                # example maps back to 503.
                down = await client.get("/api/things/2", auth=auth("alice"))
                elapsed = time.monotonic() - started
            assert down.status_code == 503, (down.status_code, down.text)
            assert down.json()["code"] == "backend_unavailable"
            assert elapsed < 2.5, f"the refusal took {elapsed:.2f} s"
            assert len(upstream.hits) == 1


async def test_nginx_reserves_and_the_app_settles_the_actual_cost(services: Services) -> None:
    await proxy_reserves_and_the_app_settles_the_actual_cost(
        services, nginx_in_front, authz_from=NGINX_AUTHZ
    )


def _actual_from_path(hit: Hit) -> Mapping[str, str]:
    """The app behind /api/metered/<n>: it tells its cost (n) in X-Quota-Actual and holds
    no key; nginx settles."""
    last = hit.path.rsplit("/", 1)[1]
    return {"X-Quota-Actual": last} if last.isdigit() else {}


async def test_nginx_settles_from_the_apps_x_quota_actual(services: Services) -> None:
    config = reserve_config_text(NGINX_AUTHZ)
    engine = await services.make_engine(config)
    await open_accounts(engine)
    await engine.credit("alice", 100)
    in_front = functools.partial(nginx_in_front, settle_key=services.settle_key)
    with Upstream(work=_actual_from_path).running() as upstream, behind_proxy(
        services, in_front, upstream, config
    ) as stack:  # fmt: skip
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=10) as client:
            for path in ("/api/metered/4", "/api/metered/13", "/api/metered/20"):
                r = await client.get(path, auth=auth("alice"))
                assert r.status_code == 200, r.text
                assert "x-quota-actual" not in r.headers
            silent = await client.get("/api/metered/none", auth=auth("alice"))
            assert silent.status_code == 200
        assert all("x-quota-hold-id" not in h.headers for h in upstream.hits)
        # The settles run after each answer: wait for the last.
        wanted = 103 - (4 + 13 + 15)
        for _ in range(100):
            state = await engine.get_account("alice")
            if state.balance == wanted and state.reserved == 10:
                break
            await asyncio.sleep(0.05)
        # The answer without X-Quota-Actual left its hold (10) to its policy.
        assert (state.balance, state.reserved) == (wanted, 10)
