"""Verifying clients' tokens (quotagate.auth.tokens, signing_keys, identity): what is accepted,
every way a token is refused, the JWKS fetched on an unknown kid, and the cache."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tests.support.jwt_issuer import (
    AUDIENCE,
    ISSUER,
    Issuer,
    JwksServer,
    jwt_config_text,
    public_pem,
)

from quotagate.auth import signing_keys
from quotagate.auth.identity import TokenIdentity, account_of_request, identity_source
from quotagate.auth.tokens import TokenVerifier
from quotagate.config import default_config_text, parse_config
from quotagate.errors import (
    BackendUnavailable,
    ConfigError,
    Forbidden,
    KeysRefreshing,
    QuotagateError,
    Unauthorized,
)
from quotagate.settings import Settings

SECRET = "s" * 40
COOLDOWN_SECONDS = 0.3
"""The JWKS refetch cooldown in these tests (10 s in production)."""


def config(identity_toml: str) -> str:
    return default_config_text() + "\n" + identity_toml


def build(identity_toml: str, secret: str | None = None) -> TokenIdentity:
    source = identity_source(parse_config(config(identity_toml)).identity, secret)
    assert isinstance(source, TokenIdentity)
    return source


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture
async def identity(jwks: JwksServer) -> AsyncIterator[TokenIdentity]:
    source = build(jwt_config_text(jwks.url))
    await source.start()
    assert isinstance(source.keys, signing_keys.JwksKeys)
    source.keys.refetch_cooldown_seconds = COOLDOWN_SECONDS
    await asyncio.sleep(COOLDOWN_SECONDS)  # a rotated key may be fetched from now on
    yield source
    await source.aclose()


def refusal(identity: TokenIdentity, headers: dict[str, str]) -> QuotagateError:
    with pytest.raises(QuotagateError) as caught:
        identity.account_of(headers)
    return caught.value


async def test_a_good_token_names_its_account(
    identity: TokenIdentity, issuer: Issuer, jwks: JwksServer
) -> None:
    assert identity.account_of(bearer(issuer.token("alice"))) == "alice"
    # The proxy's X-Account-Id is not read in jwt mode.
    forged = {**bearer(issuer.token("alice")), "x-account-id": "bob"}
    assert identity.account_of(forged) == "alice"
    assert jwks.fetches == 1  # at start only


@pytest.mark.parametrize(
    ("overrides", "reason", "detail"),
    [
        ({"exp": int(time.time()) - 120}, "token_expired", "expired"),
        ({"iss": "https://evil.example/"}, "invalid_token", "issuer"),
        ({"aud": "another-service"}, "invalid_token", "audience"),
        ({"nbf": int(time.time()) + 600}, "invalid_token", "not valid yet"),
        ({"exp": None}, "invalid_token", "no exp claim"),
        ({"sub": None}, "invalid_token", "no sub claim"),
    ],
)
async def test_claims_that_do_not_fit_are_refused(
    identity: TokenIdentity, issuer: Issuer, overrides: dict[str, Any], reason: str, detail: str
) -> None:
    error = refusal(identity, bearer(issuer.token("alice", **overrides)))
    assert isinstance(error, Unauthorized)
    assert error.extra["reason"] == reason
    assert detail in error.detail


async def test_an_expiry_within_the_leeway_is_accepted(
    identity: TokenIdentity, issuer: Issuer
) -> None:
    token = issuer.token("alice", exp=int(time.time()) - 10)  # leeway: 30 s
    assert identity.account_of(bearer(token)) == "alice"


async def test_a_claim_that_is_not_an_account_id_is_forbidden(
    identity: TokenIdentity, issuer: Issuer
) -> None:
    for sub in ("bad id!", "x" * 129):
        error = refusal(identity, bearer(issuer.token(sub)))
        assert isinstance(error, Forbidden)
        assert error.extra["reason"] == "unknown_account"


async def test_signatures_and_algorithms_that_do_not_fit_are_refused(
    identity: TokenIdentity, issuer: Issuer
) -> None:
    claims = issuer.claims("alice")
    other_key = Issuer().keys["k1"]
    cases = {
        "bad signature": jwt.encode(claims, other_key, "RS256", headers={"kid": "k1"}),
        # PyJWT types the key as never None, which "none" requires.
        "alg none": jwt.encode(claims, None, "none", headers={"kid": "k1"}),  # type: ignore[arg-type]
        # The public key used as an HMAC secret: whoever has it could sign anything.
        "HS with the public key": _hmac_token(claims, public_pem(issuer.keys["k1"])),
        "ES256 not allowed": jwt.encode(
            claims, ec.generate_private_key(ec.SECP256R1()), "ES256", headers={"kid": "k1"}
        ),
        "tampered payload": _tampered(issuer.token("alice")),
        "not a JWT": "not-a-token",
    }
    details = {}
    for name, token in cases.items():
        error = refusal(identity, bearer(token))
        assert isinstance(error, Unauthorized), name
        assert error.extra["reason"] == "invalid_token", name
        details[name] = error.detail
    assert "signature" in details["bad signature"]
    assert "'none' is not allowed" in details["alg none"]
    assert "'HS256' is not allowed" in details["HS with the public key"]
    assert "'ES256' is not allowed" in details["ES256 not allowed"]
    assert "signature" in details["tampered payload"]
    assert "not a JWT" in details["not a JWT"]


def _hmac_token(claims: dict[str, object], secret: bytes) -> str:
    """An HS256 token keyed with ``secret`` (PyJWT refuses a PEM as HMAC key, so by hand)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    body = b64(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


def _tampered(token: str) -> str:
    head, body, signature = token.split(".")
    payload = jwt.utils.base64url_decode(body).replace(b'"alice"', b'"bobby"')
    return f"{head}.{jwt.utils.base64url_encode(payload).decode()}.{signature}"


async def test_the_token_must_be_a_bearer_token(identity: TokenIdentity, issuer: Issuer) -> None:
    for headers in ({}, {"authorization": ""}, {"authorization": "Basic YWxpY2U6cHc="}):
        error = refusal(identity, headers)
        assert isinstance(error, Unauthorized)
        assert error.extra["reason"] == "no_token"
    assert identity.account_of({"authorization": f"bearer  {issuer.token('alice')}"}) == "alice"


async def test_a_rotated_key_is_fetched_once_on_its_first_token(
    identity: TokenIdentity, issuer: Issuer, jwks: JwksServer
) -> None:
    old = issuer.token("alice")
    assert identity.account_of(bearer(old)) == "alice"
    issuer.rotate("k2")
    new = issuer.token("alice")
    with pytest.raises(KeysRefreshing):
        identity.account_of(bearer(new))  # the hook's path: waits for the fetch, asks again
    assert await account_of_request(identity, bearer(new)) == "alice"
    assert await account_of_request(identity, bearer(issuer.token("bob"))) == "bob"
    assert jwks.fetches == 2
    # k1 left the JWKS: its token, verified and remembered before, is refused now.
    error = refusal(identity, bearer(old))
    assert error.extra["reason"] == "invalid_token"
    assert "kid" in error.detail
    assert jwks.fetches == 2, "an unknown kid within the cooldown fetched again"


async def test_waiting_requests_share_one_fetch(
    identity: TokenIdentity, issuer: Issuer, jwks: JwksServer
) -> None:
    issuer.rotate("k2")
    jwks.delay_seconds = 0.2
    accounts = await asyncio.gather(
        *(account_of_request(identity, bearer(issuer.token(f"user{i}"))) for i in range(20))
    )
    assert accounts == [f"user{i}" for i in range(20)]
    assert jwks.fetches == 2


async def test_a_jwks_that_does_not_answer_in_time_gives_503(
    identity: TokenIdentity, issuer: Issuer, jwks: JwksServer
) -> None:
    assert identity.account_of(bearer(issuer.token("alice"))) == "alice"
    issuer.rotate("k2")
    jwks.delay_seconds = 3.0  # the timeout is 1000 ms
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as caught:
        await account_of_request(identity, bearer(issuer.token("alice")))
    assert time.monotonic() - started < 1.5
    assert caught.value.extra["reason"] == "jwks_unavailable"
    # The keys we had still work.
    assert identity.account_of(bearer(issuer.token("carol", kid="k1"))) == "carol"


async def test_a_verified_token_is_not_verified_again_until_it_expires(
    identity: TokenIdentity, issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    verified = 0
    verify = TokenVerifier._verify

    def counted(self: TokenVerifier, token: str) -> tuple[str, float]:
        nonlocal verified
        verified += 1
        return verify(self, token)

    monkeypatch.setattr(TokenVerifier, "_verify", counted)
    token = issuer.token("alice", exp=int(time.time()) - 29)  # valid for ~1 s more (leeway)
    for _ in range(100):
        assert identity.account_of(bearer(token)) == "alice"
    assert verified == 1
    await asyncio.sleep(1.2)
    error = refusal(identity, bearer(token))
    assert error.extra["reason"] == "token_expired"
    assert verified == 2


async def test_the_cache_is_bounded(
    identity: TokenIdentity, issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("quotagate.auth.tokens.MAX_VERIFIED_TOKENS", 3)
    tokens = [issuer.token(f"user{i}") for i in range(5)]
    for token in tokens:
        identity.account_of(bearer(token))
    assert len(identity.verifier._verified) == 3


async def test_another_header_and_claim(jwks: JwksServer, issuer: Issuer) -> None:
    text = jwt_config_text(
        jwks.url, token_header='"X-Forwarded-Access-Token"', account_claim='"account_id"'
    )
    source = build(text)
    await source.start()
    try:
        token = issuer.token("someone", account_id="tenant-7")
        assert source.account_of({"x-forwarded-access-token": token}) == "tenant-7"
        error = refusal(source, bearer(token))
        assert error.extra["reason"] == "no_token"
        error = refusal(source, {"x-forwarded-access-token": issuer.token("someone")})
        assert "no account_id claim" in error.detail
    finally:
        await source.aclose()


def hs_config() -> str:
    return (
        f'[identity]\nmode = "jwt"\n[identity.jwt]\nissuer = "{ISSUER}"\n'
        f'audience = "{AUDIENCE}"\nalgorithms = ["HS256"]\n'
    )


async def test_an_hmac_secret_from_the_environment(issuer: Issuer) -> None:
    settings = Settings.from_env({"QUOTAGATE_JWT_SECRET": SECRET})
    assert SECRET not in repr(settings)
    source = build(hs_config(), settings.jwt_secret)
    token = jwt.encode(issuer.claims("alice"), SECRET, "HS256")
    assert source.account_of(bearer(token)) == "alice"
    wrong = jwt.encode(issuer.claims("alice"), "t" * 40, "HS256")
    assert "signature" in refusal(source, bearer(wrong)).detail
    with pytest.raises(ConfigError, match="QUOTAGATE_JWT_SECRET"):
        build(hs_config(), None)
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        Settings.from_env({"QUOTAGATE_JWT_SECRET": "short"})


async def test_a_public_key_file(tmp_path: Path, issuer: Issuer) -> None:
    pem = tmp_path / "issuer.pem"
    pem.write_bytes(public_pem(issuer.keys["k1"]))
    text = (
        f'[identity]\nmode = "jwt"\n[identity.jwt]\nissuer = "{ISSUER}"\n'
        f'audience = "{AUDIENCE}"\npublic_key_file = "{pem}"\n'
    )
    assert build(text).account_of(bearer(issuer.token("alice"))) == "alice"
    private = issuer.keys["k1"].private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )  # fmt: skip
    pem.write_bytes(private)
    with pytest.raises(ConfigError, match="not a PEM public key"):
        build(text)
    ec_public = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem.write_bytes(
        ec_public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(ConfigError, match="cannot check RS256"):
        build(text)


@pytest.mark.parametrize(
    ("identity_toml", "message"),
    [
        ('[identity]\nmode = "jwt"\n', "needs an [identity.jwt] table"),
        (
            jwt_config_text("http://127.0.0.1:1/j").replace('["RS256"]', '["RS256", "HS256"]'),
            "mixes HMAC",
        ),
        (jwt_config_text("http://127.0.0.1:1/j").replace('["RS256"]', '["none"]'), "none"),
        (jwt_config_text("http://127.0.0.1:1/j").replace('["RS256"]', '["HS256"]'), "HMAC"),
        (jwt_config_text("http://id.example.com/j"), "must be an https:// URL"),
        (jwt_config_text("http://127.0.0.1:1/j", public_key_file='"/k.pem"'), "exactly one"),
        (jwt_config_text("http://127.0.0.1:1/j").replace('issuer = "', 'issuer = "" #'), ">= 1"),
    ],
)
def test_a_jwt_table_that_cannot_work_is_refused_at_start(identity_toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(config(identity_toml))
