"""Whose account a hook request or ``/v1/me`` is for: the ``[identity]`` mode of the config.

- ``header``: the ``X-Account-Id`` the proxy sets after its own authentication. quotagate
  trusts the proxy to overwrite whatever the client sent, and whoever holds the hook key can
  name any account.
- ``jwt``: the client's own token, forwarded by the proxy (``Authorization: Bearer`` by
  default) and verified here (:mod:`quotagate.auth.tokens`). ``X-Account-Id`` is ignored, so
  the hook key alone names no account: a caller needs a token the issuer signed.

Either way the hook key (``X-Quotagate-Key``) is checked first, by the caller of this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

from quotagate import ids
from quotagate.auth.signing_keys import SigningKeys, signing_keys
from quotagate.auth.tokens import TokenVerifier
from quotagate.config import Identity
from quotagate.errors import (
    Forbidden,
    KeysRefreshing,
    MissingAccountHeader,
    QuotagateError,
    Unauthorized,
)

__all__ = ["HeaderIdentity", "IdentitySource", "KeysRefreshing", "TokenIdentity"]


class IdentitySource(Protocol):
    def account_of(self, headers: Mapping[str, str]) -> str:
        """The caller's account id (checked), from headers keyed by lower-case name. Raises
        a QuotagateError to refuse, or KeysRefreshing: ask again when its fetch is done."""
        ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class HeaderIdentity:
    """The account the proxy names in ``X-Account-Id``."""

    def account_of(self, headers: Mapping[str, str]) -> str:
        account_id = headers.get("x-account-id")
        if not account_id:
            raise MissingAccountHeader(
                "no identity: the proxy sent no X-Account-Id", reason="no_identity"
            )
        try:
            return ids.check_account_id(account_id)
        except QuotagateError:
            raise Forbidden(
                "X-Account-Id is not a valid account id", reason="unknown_account"
            ) from None

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


_BEARER = "bearer "


class TokenIdentity:
    """The account named by the client's verified token, in ``header`` (``Authorization``
    by default, where it follows ``Bearer``; in any other header, ``Bearer`` is optional)."""

    def __init__(self, verifier: TokenVerifier, keys: SigningKeys, header: str) -> None:
        self.verifier = verifier
        self.keys = keys
        self.header_title = header
        self.header = header.lower()

    def account_of(self, headers: Mapping[str, str]) -> str:
        value = headers.get(self.header, "").strip()
        if value[: len(_BEARER)].lower() == _BEARER:
            value = value[len(_BEARER) :].strip()
        elif self.header == "authorization" and value:
            raise Unauthorized(
                "the Authorization header does not carry a Bearer token", reason="no_token"
            )
        if not value:
            raise Unauthorized(
                f"no token: the request has no {self.header_title}", reason="no_token"
            )
        return self.verifier.account_of(value)

    async def start(self) -> None:
        await self.keys.start()

    async def aclose(self) -> None:
        await self.keys.aclose()


def identity_source(identity: Identity, jwt_secret: str | None) -> IdentitySource:
    """The source ``identity`` configures; raises ConfigError for a key that cannot serve."""
    if identity.mode == "header":
        return HeaderIdentity()
    assert identity.jwt is not None  # the config check asks for the table in jwt mode
    keys = signing_keys(identity.jwt, jwt_secret)
    return TokenIdentity(TokenVerifier(identity.jwt, keys), keys, identity.jwt.token_header)


async def account_of_request(source: IdentitySource, headers: Mapping[str, str]) -> str:
    """:meth:`IdentitySource.account_of` for a handler that may wait: through a fetch of the
    signing keys, when the token names a key not fetched yet. Each fetch is bounded by its
    timeout, and after one the same kid is refused until the refetch cooldown has passed."""
    while True:
        try:
            return source.account_of(headers)
        except KeysRefreshing as refreshing:
            # Shielded: a client that goes away must not cancel the fetch others wait on.
            await asyncio.shield(refreshing.fetch)
