"""nginx `auth_request` in front of an upstream, with examples/nginx as its configuration."""

from __future__ import annotations

import asyncio
import contextlib
import re
import string
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest
from tests.conftest import EngineFactory
from tests.e2e.harness import (
    EXAMPLES,
    USERS,
    Hit,
    SettlingApp,
    Upstream,
    assert_partition_flushes,
    auth,
    binary,
    e2e_config_text,
    gateway,
    open_accounts,
    proxy,
    reserve_config_text,
    run_reserve_scenario,
    run_scenario,
    sha_htpasswd_line,
    workdir,
)
from tests.support.servers import free_port, redis_process

NGINX = binary("nginx")
pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (.ci/run installs it)"
)

MAIN_CONF = """
daemon off;
worker_processes 1;
pid $work/nginx.pid;
error_log stderr warn;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path $work/client_body;
    proxy_temp_path $work/proxy;
    fastcgi_temp_path $work/fastcgi;
    uwsgi_temp_path $work/uwsgi;
    scgi_temp_path $work/scgi;
    include $work/quotagate.conf;
}
"""


@contextlib.contextmanager
def nginx_in_front(
    work: Path, *, gateway_url: str, upstream: Upstream, hook_key: str, settle_key: str = "unused"
) -> Iterator[str]:
    """nginx with the example's site filled in for this test; yields its base URL."""
    assert NGINX is not None
    listen = free_port()
    template = (EXAMPLES / "nginx" / "quotagate.conf.template").read_text()
    site = string.Template(template).safe_substitute(
        LISTEN=f"127.0.0.1:{listen}",
        QUOTAGATE_ADDR=gateway_url.removeprefix("http://"),
        APP_ADDR=upstream.address,
        QUOTAGATE_HOOK_KEY=hook_key,
        QUOTAGATE_SETTLE_KEY=settle_key,
        HTPASSWD_FILE=str(work / "htpasswd"),
    )
    assert not re.search(r"\$\{[A-Z_]+\}", site), "a placeholder was left unfilled"
    (work / "quotagate.conf").write_text(site)
    (work / "htpasswd").write_text("".join(sha_htpasswd_line(u) + "\n" for u in USERS))
    (work / "nginx.conf").write_text(string.Template(MAIN_CONF).substitute(work=work))
    args = [NGINX, "-p", str(work), "-c", str(work / "nginx.conf"), "-e", "stderr"]
    base = f"http://127.0.0.1:{listen}"
    with proxy("nginx", args, cwd=work, ready_url=f"{base}/api/credits"):
        yield base


async def test_nginx_charges_until_the_credits_run_out(
    make_engine: EngineFactory,
    redis_url: str,
    ledger_url: str,
    key_prefix: str,
    hook_key: str,
    upstream: Upstream,
) -> None:
    config = e2e_config_text(EXAMPLES / "nginx" / "quotagate.toml")
    assert "deny_status = 403" in config and "rate_limited_status = 403" in config
    engine = await make_engine(config)
    await open_accounts(engine)
    with workdir() as work, gateway(
        redis_url=redis_url, database_url=ledger_url, key_prefix=key_prefix,
        config_text=config, work=work,
    ) as gateway_url, nginx_in_front(
        work, gateway_url=gateway_url, upstream=upstream, hook_key=hook_key
    ) as base:  # fmt: skip
        await run_scenario(base, upstream, engine)
        await assert_partition_flushes(engine, ledger_url, "bob")


async def test_nginx_answers_503_when_redis_is_down_and_never_calls_the_app(
    make_engine: EngineFactory,
    ledger_url: str,
    key_prefix: str,
    hook_key: str,
    upstream: Upstream,
) -> None:
    config = e2e_config_text(EXAMPLES / "nginx" / "quotagate.toml")
    with redis_process() as private, workdir() as work:
        engine = await make_engine(config, url=private.url)
        await open_accounts(engine)
        with gateway(
            redis_url=private.url, database_url=ledger_url, key_prefix=key_prefix,
            config_text=config, work=work,
        ) as gateway_url, nginx_in_front(
            work, gateway_url=gateway_url, upstream=upstream, hook_key=hook_key
        ) as base:  # fmt: skip
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
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


async def test_nginx_reserves_and_the_app_settles_the_actual_cost(
    make_engine: EngineFactory,
    redis_url: str,
    ledger_url: str,
    key_prefix: str,
    hook_key: str,
    service_key: str,
) -> None:
    config = reserve_config_text(EXAMPLES / "nginx" / "quotagate.toml")
    engine = await make_engine(config)
    await open_accounts(engine)
    app = SettlingApp(service_key=service_key)
    with Upstream(work=app).running() as upstream, workdir() as work, gateway(
        redis_url=redis_url, database_url=ledger_url, key_prefix=key_prefix,
        config_text=config, work=work,
    ) as gateway_url, nginx_in_front(
        work, gateway_url=gateway_url, upstream=upstream, hook_key=hook_key
    ) as base:  # fmt: skip
        app.gateway_url = gateway_url
        await run_reserve_scenario(base, upstream, app, engine, ledger_url, other_key=hook_key)


def _actual_from_path(hit: Hit) -> Mapping[str, str]:
    """The app behind /api/metered/<n>: it tells its cost (n) in X-Quota-Actual and holds
    no key; nginx settles."""
    last = hit.path.rsplit("/", 1)[1]
    return {"X-Quota-Actual": last} if last.isdigit() else {}


async def test_nginx_settles_from_the_apps_x_quota_actual(
    make_engine: EngineFactory,
    redis_url: str,
    ledger_url: str,
    key_prefix: str,
    hook_key: str,
    service_key: str,
) -> None:
    config = reserve_config_text(EXAMPLES / "nginx" / "quotagate.toml")
    engine = await make_engine(config)
    await open_accounts(engine)
    await engine.credit("alice", 100)
    with Upstream(work=_actual_from_path).running() as upstream, workdir() as work, gateway(
        redis_url=redis_url, database_url=ledger_url, key_prefix=key_prefix,
        config_text=config, work=work,
    ) as gateway_url, nginx_in_front(
        work, gateway_url=gateway_url, upstream=upstream, hook_key=hook_key,
        settle_key=service_key,
    ) as base:  # fmt: skip
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
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
