"""The hook and /v1/me of a real gateway in jwt mode: the account is the token's, X-Account-Id
from whoever holds the hook key names nothing, and the fast path answers as ASGI does."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from tests.api.helpers import assert_problem, balance, create_account
from tests.api.test_hook_protocol import Conn, request
from tests.support.gateway import GatewayServer, gateway_settings, running_gateway
from tests.support.jwt_issuer import Issuer, JwksServer, jwt_config_text

from quotagate.auth.signing_keys import JwksKeys
from quotagate.config import default_config_text, parse_config


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture(scope="module")
def jwks(issuer: Issuer) -> Iterator[JwksServer]:
    with JwksServer(issuer).running() as server:
        yield server


@pytest.fixture(scope="module")
def gateway(
    redis_url: str,
    migrated_database_url: str,
    gateway_prefix: str,
    api_keys: dict[str, str],
    jwks: JwksServer,
) -> Iterator[GatewayServer]:
    config = parse_config(default_config_text() + "\n" + jwt_config_text(jwks.url))
    settings = gateway_settings(redis_url, migrated_database_url, gateway_prefix)
    with running_gateway(settings, config) as server:
        yield server


def hook(api_keys: dict[str, str], token: str | None = None, **extra: str) -> dict[str, str]:
    headers = {"X-Quotagate-Key": api_keys["hook"], "X-Quota-Resource": "api_call"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return {**headers, **{k.replace("_", "-"): v for k, v in extra.items()}}


def test_the_hook_charges_the_tokens_account_whatever_x_account_id_says(
    http: httpx.Client, api_keys: dict[str, str], issuer: Issuer
) -> None:
    alice = create_account(http, api_keys["admin"])
    bob = create_account(http, api_keys["admin"])
    token = issuer.token(alice)
    for remaining in ("999", "998"):
        r = http.get("/v1/authz", headers=hook(api_keys, token, X_Account_Id=bob))
        assert r.status_code == 200, r.text
        assert (r.headers["x-quota-account"], r.headers["x-quota-remaining"]) == (alice, remaining)
    # The hook key and a forged X-Account-Id, without a token: refused, nothing charged.
    r = http.get("/v1/authz", headers=hook(api_keys, X_Account_Id=bob))
    assert_problem(r, 401, "unauthorized")
    assert r.headers["x-quota-reason"] == "no_token"
    assert (balance(http, api_keys["admin"], alice), balance(http, api_keys["admin"], bob)) == (
        998,
        1000,
    )


def test_me_reads_only_the_tokens_account(
    http: httpx.Client, api_keys: dict[str, str], issuer: Issuer
) -> None:
    alice = create_account(http, api_keys["admin"])
    bob = create_account(http, api_keys["admin"])
    forged = {"X-Quotagate-Key": api_keys["hook"], "X-Account-Id": bob}
    assert_problem(http.get("/v1/me", headers=forged), 401, "unauthorized")
    me = http.get("/v1/me", headers={**forged, "Authorization": f"Bearer {issuer.token(alice)}"})
    assert me.status_code == 200, me.text
    assert (me.json()["account_id"], me.json()["balance"]) == (alice, 1000)
    # A token without the hook key reads nothing either.
    r = http.get("/v1/me", headers={"Authorization": f"Bearer {issuer.token(alice)}"})
    assert_problem(r, 401, "unauthorized")


def test_refused_tokens_say_why(
    http: httpx.Client, api_keys: dict[str, str], issuer: Issuer
) -> None:
    alice = create_account(http, api_keys["admin"])
    cases = [
        (issuer.token(alice, exp=1), 401, "token_expired"),
        (issuer.token(alice, aud="elsewhere"), 401, "invalid_token"),
        (Issuer().token(alice), 401, "invalid_token"),  # another issuer's key, same kid
        (issuer.token("bad id!"), 403, "unknown_account"),
    ]
    for token, status, reason in cases:
        r = http.get("/v1/authz", headers=hook(api_keys, token))
        assert r.status_code == status, (reason, r.text)
        assert r.headers["x-quota-reason"] == reason
        assert r.headers["content-type"] == "application/problem+json"
    assert balance(http, api_keys["admin"], alice) == 1000


def test_a_rotated_key_is_fetched_and_the_request_waits_for_it(
    gateway: GatewayServer, http: httpx.Client, api_keys: dict[str, str], jwks: JwksServer
) -> None:
    alice = create_account(http, api_keys["admin"])
    rotated = Issuer()
    rotated.rotate("k-rotated")
    keys = gateway.app.state.gateway.identity.keys
    assert isinstance(keys, JwksKeys)
    keys.refetch_cooldown_seconds = 0.0
    jwks.issuer.keys["k-rotated"] = rotated.keys["k-rotated"]
    jwks.issuer.published = [*jwks.issuer.published, "k-rotated"]
    before = jwks.fetches
    token = rotated.token(alice, kid="k-rotated")
    for remaining in ("999", "998"):
        r = http.get("/v1/authz", headers=hook(api_keys, token))
        assert r.status_code == 200, r.text
        assert r.headers["x-quota-remaining"] == remaining
    assert jwks.fetches == before + 1


def test_answers_are_the_same_as_through_asgi(
    gateway: GatewayServer, http: httpx.Client, api_keys: dict[str, str], issuer: Issuer
) -> None:
    alice = create_account(http, api_keys["admin"])
    cases = [
        (hook(api_keys, issuer.token(alice), X_Quota_Units="1000000"), 402),
        (hook(api_keys, X_Account_Id=alice), 401),
        (hook(api_keys, issuer.token(alice, exp=1)), 401),
        (hook(api_keys, "not-a-token"), 401),
        (hook(api_keys, issuer.token("bad id!")), 403),
    ]
    conn = Conn(gateway)
    try:
        for headers, status in cases:
            conn.send(request("GET", "/v1/authz/api/x", headers))
            fast = conn.reply()
            absolute = f"http://127.0.0.1:{gateway.port}/v1/authz/api/x"
            conn.send(request("GET", absolute, headers))
            slow = conn.reply()
            assert fast.status == slow.status == status, (headers, fast, slow)
            assert fast.comparable() == slow.comparable()
            assert fast.body == slow.body
    finally:
        conn.close()
    assert balance(http, api_keys["admin"], alice) == 1000
