"""Verifying a client's JWT and naming the account it is for, with the answer remembered.

A token is accepted when its header's ``alg`` is one of the configured algorithms (never
"none": the config cannot name it), its signature checks with the configured key, its ``iss``
and ``aud`` are the configured ones, ``exp`` is in the future and ``nbf``/``iat`` are not
(within ``leeway_seconds``), and its account claim is a valid account id.

The hook verifies once per token, not once per request: a verified token is remembered (in a
bounded LRU) until it expires, so a client's next request with the same token costs a dict
lookup. The key is the token itself, as the key cache keeps presented API keys: the dict's own
hash of it is the cheapest one, and a digest would hide nothing from a reader of this
process's memory, which holds the signing secret and the hook key anyway. A change of the
signing keys forgets them all.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import jwt

from quotagate import ids
from quotagate.auth.signing_keys import SigningKeys
from quotagate.config import JwtIdentity
from quotagate.errors import Forbidden, QuotagateError, Unauthorized

MAX_VERIFIED_TOKENS = 10_000
"""Tokens remembered as verified; past this the least recently used is forgotten (and is
verified again when it comes back)."""

_REGISTERED = ("exp", "iss", "aud")
"""Claims every accepted token carries: a token without ``exp`` would never stop working."""


def _invalid(detail: str) -> Unauthorized:
    return Unauthorized(detail, reason="invalid_token")


class TokenVerifier:
    """The account a token names, or a refusal: 401 ``token_expired`` / ``invalid_token``,
    403 ``unknown_account`` when the claim cannot be an account id."""

    def __init__(self, config: JwtIdentity, keys: SigningKeys) -> None:
        self.config = config
        self.keys = keys
        self.algorithms = frozenset(config.algorithms)
        self._options: Any = {"require": [*_REGISTERED, config.account_claim]}
        self._verified: OrderedDict[str, tuple[str, float]] = OrderedDict()
        """A verified token -> (its account, the time.time() until which it is valid)."""
        self._keys_version = keys.version

    def account_of(self, token: str) -> str:
        """The token's account; raises a QuotagateError, or KeysRefreshing (ask again later)."""
        if self.keys.version != self._keys_version:
            self._verified.clear()  # tokens of a withdrawn key must not outlive it here
            self._keys_version = self.keys.version
        now = time.time()
        remembered = self._verified.get(token)
        if remembered is not None:
            account_id, valid_until = remembered
            if now < valid_until:
                self._verified.move_to_end(token)
                return account_id
            del self._verified[token]
        account_id, valid_until = self._verify(token)
        if now < valid_until:
            self._verified[token] = (account_id, valid_until)
            if len(self._verified) > MAX_VERIFIED_TOKENS:
                self._verified.popitem(last=False)
        return account_id

    def _verify(self, token: str) -> tuple[str, float]:
        """(account, valid until) of a token not seen before: the whole check."""
        algorithm, kid = self._header(token)
        key = self.keys.key_for(kid, algorithm)
        try:
            claims = jwt.decode(
                token, key, algorithms=[algorithm], audience=self.config.audience,
                issuer=self.config.issuer, leeway=self.config.leeway_seconds,
                options=self._options,
            )  # fmt: skip
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired", reason="token_expired") from None
        except jwt.ImmatureSignatureError:
            raise _invalid("the token is not valid yet (nbf or iat in the future)") from None
        except jwt.InvalidIssuerError:
            raise _invalid("the token's issuer (iss) is not the configured one") from None
        except jwt.InvalidAudienceError:
            raise _invalid("the token's audience (aud) is not this service") from None
        except jwt.InvalidSignatureError:
            raise _invalid("the token's signature does not check") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid(f"the token has no {exc.claim} claim") from None
        except jwt.PyJWTError as exc:
            raise _invalid(f"the token is not valid: {exc}") from None
        return self._account(claims), float(claims["exp"]) + self.config.leeway_seconds

    def _header(self, token: str) -> tuple[str, str | None]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _invalid("the token is not a JWT") from None
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in self.algorithms:
            allowed = ", ".join(self.config.algorithms)
            raise _invalid(f"the token's algorithm {algorithm!r} is not allowed ({allowed})")
        if kid is not None and not isinstance(kid, str):
            raise _invalid("the token's kid is not a string")
        return algorithm, kid

    def _account(self, claims: dict[str, Any]) -> str:
        claim = self.config.account_claim
        value = claims[claim]
        try:
            return ids.check_account_id(value)
        except QuotagateError:
            raise Forbidden(
                f"the token's {claim} claim is not a valid account id", reason="unknown_account"
            ) from None
