"""Charges served through the router. Check and consume, the hot path of services, are the
front's (:mod:`quotagate.api.service_endpoints`), answered before the router."""

from __future__ import annotations

from starlette.routing import Route

from quotagate.api.gateway import Gateway


def routes(gw: Gateway) -> list[Route]:
    return []
