"""The keys that check a client's token: a static key (an HMAC secret from the environment, or
a PEM public key file) or the keys of a JWKS URL, fetched in the background and cached.

    key_for(kid, algorithm)     no I/O: the hot path asks this once per token it has not seen
    KeysRefreshing              raised by key_for when the token's kid is unknown and a fetch
                                of the JWKS is due; it carries that fetch, after which the
                                caller asks again (and then gets a key or a refusal)

The JWKS is fetched with httpx's async client under one overall timeout, so neither the hot
path nor the event loop ever waits on the issuer: requests whose kid is unknown wait for one
shared fetch, the others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx
import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from quotagate.config import JwtIdentity
from quotagate.errors import BackendUnavailable, ConfigError, KeysRefreshing, Unauthorized

log = logging.getLogger(__name__)

JWKS_REFRESH_SECONDS = 300.0
"""How often the JWKS is fetched again: a key its issuer withdrew stops working within this."""

JWKS_REFETCH_COOLDOWN_SECONDS = 10.0
"""After a fetch ends, an unknown kid fetches the JWKS again only this much later: a stream of
made-up kids costs the issuer one request per interval, not one per token; and a request that
waited for a fetch and still finds no key is refused rather than made to wait again."""

MAX_JWKS_BYTES = 1_000_000
"""A JWKS holds a few keys of a few hundred bytes each; anything this large is not one."""


class SigningKeys(Protocol):
    version: int
    """Changes whenever the set of keys changes, so that tokens verified with a withdrawn key
    are verified again."""

    def key_for(self, kid: str | None, algorithm: str) -> Any: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class StaticKey:
    """One key for every token: an HMAC secret, or a public key read once at start."""

    version = 0

    def __init__(self, key: Any) -> None:
        self.key = key

    def key_for(self, kid: str | None, algorithm: str) -> Any:
        return self.key

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def public_key_from_file(path: str, algorithms: Sequence[str]) -> Any:
    """The public key in a PEM file, checked against every allowed algorithm."""
    try:
        key = load_pem_public_key(Path(path).read_bytes())
    except OSError as exc:
        raise ConfigError(
            f"identity.jwt.public_key_file: cannot read {path}: {exc.strerror}"
        ) from None
    except ValueError:
        raise ConfigError(f"identity.jwt.public_key_file: {path} is not a PEM public key") from None
    for name in algorithms:
        try:
            jwt.get_algorithm_by_name(name).prepare_key(key)
        except (jwt.InvalidKeyError, TypeError, ValueError):
            raise ConfigError(
                f"identity.jwt.public_key_file: {path} holds a key that cannot check {name}"
            ) from None
    return key


class _Jwk:
    __slots__ = ("algorithm", "key")

    def __init__(self, key: Any, algorithm: str | None) -> None:
        self.key = key
        self.algorithm = algorithm
        """The JWK's own "alg", when it names one: the only algorithm the key may check."""


def parse_jwks(data: bytes) -> dict[str | None, _Jwk]:
    """The signing keys of a JWKS document by kid. Keys for encryption and symmetric ("oct")
    keys are left out: a published secret is no secret."""
    document = json.loads(data)
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError('a JWKS is a JSON object with a "keys" list')
    keys: dict[str | None, _Jwk] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") == "oct":
            continue
        if entry.get("use", "sig") != "sig":
            continue
        try:
            jwk = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError):
            continue  # a key type this build cannot use: the others still can
        alg = entry.get("alg")
        keys[entry.get("kid")] = _Jwk(jwk.key, alg if isinstance(alg, str) else None)
    if not keys:
        raise ValueError("the JWKS holds no signing key we can use")
    return keys


class JwksKeys:
    """The keys of a JWKS URL: fetched at start, every JWKS_REFRESH_SECONDS, and when a token
    names a kid we do not have (at most every JWKS_REFETCH_COOLDOWN_SECONDS)."""

    def __init__(self, url: str, *, timeout_ms: int) -> None:
        self.url = url
        self.timeout_seconds = timeout_ms / 1000
        self.version = 0
        self.refetch_cooldown_seconds = JWKS_REFETCH_COOLDOWN_SECONDS
        self._keys: dict[str | None, _Jwk] = {}
        self._document: bytes | None = None
        self._fetch: asyncio.Task[None] | None = None
        self._fetched_at = -math.inf
        """monotonic time the last fetch ended, whether it brought keys or not."""
        self._last_error: str | None = None
        self._client = httpx.AsyncClient(follow_redirects=False)
        self._loop_task: asyncio.Task[None] | None = None

    # -- the hot path -------------------------------------------------------------------

    def key_for(self, kid: str | None, algorithm: str) -> Any:
        jwk = self._find(kid)
        if jwk.algorithm is not None and jwk.algorithm != algorithm:
            raise Unauthorized(
                f"the token is signed with {algorithm}, its key is for {jwk.algorithm}",
                reason="invalid_token",
            )
        return jwk.key

    def _find(self, kid: str | None) -> _Jwk:
        jwk = self._keys.get(kid)
        if jwk is None and kid is None and len(self._keys) == 1:
            jwk = next(iter(self._keys.values()))  # one key: a token need not name it
        if jwk is not None:
            return jwk
        if self._fetch is not None:
            raise KeysRefreshing(self._fetch)
        if time.monotonic() - self._fetched_at >= self.refetch_cooldown_seconds:
            raise KeysRefreshing(self.refresh_soon())
        if self._last_error is not None:
            raise BackendUnavailable(
                f"the token's key cannot be checked: the JWKS could not be fetched "
                f"({self._last_error})",
                reason="jwks_unavailable",
            )
        raise Unauthorized(
            "the token's signing key (its kid) is not in the issuer's JWKS",
            reason="invalid_token",
        )

    # -- fetching -----------------------------------------------------------------------

    def refresh_soon(self) -> asyncio.Task[None]:
        """The fetch under way, or a new one: one at a time, whoever asks."""
        if self._fetch is None:
            self._fetch = asyncio.ensure_future(self._refresh())
        return self._fetch

    async def _refresh(self) -> None:
        try:
            async with asyncio.timeout(self.timeout_seconds):
                data = await self._download()
            keys = parse_jwks(data)
        except (TimeoutError, httpx.HTTPError, ValueError) as exc:
            self._last_error = str(exc) or type(exc).__name__
            log.warning("JWKS %s not fetched, keeping the keys we have: %s", self.url, exc)
            return
        finally:
            # Set before the task is done, so that whoever waited on it and asks again finds
            # no fetch under way and the cooldown running: refused, not sent to wait again.
            self._fetch = None
            self._fetched_at = time.monotonic()
        self._last_error = None
        if data != self._document:
            self._keys, self._document = keys, data
            self.version += 1

    async def _download(self) -> bytes:
        async with self._client.stream("GET", self.url) as response:
            response.raise_for_status()
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError(f"the JWKS is larger than {MAX_JWKS_BYTES} bytes")
            return bytes(body)

    async def start(self) -> None:
        """The first fetch, then one every JWKS_REFRESH_SECONDS in the background."""
        await self.refresh_soon()
        if not self._keys:
            log.warning("no JWKS keys loaded from %s yet: tokens are refused", self.url)
        self._loop_task = asyncio.create_task(self._loop(), name="quotagate-jwks-refresh")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(JWKS_REFRESH_SECONDS)
            await self.refresh_soon()

    async def aclose(self) -> None:
        for task in (self._loop_task, self._fetch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._client.aclose()


def signing_keys(jwt_config: JwtIdentity, secret: str | None) -> SigningKeys:
    """The keys the config names; the HMAC secret comes from the environment."""
    if jwt_config.uses_secret:
        if secret is None:
            raise ConfigError(
                f"QUOTAGATE_JWT_SECRET: [identity.jwt] uses {jwt_config.algorithms[0]}, "
                "whose secret must be set in the environment"
            )
        return StaticKey(secret.encode())
    if jwt_config.public_key_file is not None:
        return StaticKey(public_key_from_file(jwt_config.public_key_file, jwt_config.algorithms))
    assert jwt_config.jwks_url is not None  # the config check asks for one of the two
    return JwksKeys(jwt_config.jwks_url, timeout_ms=jwt_config.jwks_timeout_ms)
