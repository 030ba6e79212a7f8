"""A token issuer for tests: real RSA keys, signed JWTs, and its JWKS served on loopback.

issuer = Issuer()
with JwksServer(issuer).running() as jwks:
    token = issuer.token("alice")
    ... identity.jwt.jwks_url = jwks.url; jwks.fetches counts the downloads
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.support.servers import free_port, serving_in_a_thread

ISSUER = "https://id.quotagate.test/"
AUDIENCE = "quotagate-test"


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass
class Issuer:
    """Signs tokens with its current key; its JWKS publishes the keys in ``published``."""

    keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=lambda: {"k1": rsa_key()})
    current: str = "k1"
    published: list[str] = field(default_factory=lambda: ["k1"])

    def rotate(self, kid: str) -> None:
        """A new key signs from now on; the JWKS publishes it alone."""
        self.keys[kid] = rsa_key()
        self.current = kid
        self.published = [kid]

    def claims(self, account: str, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": account, "iat": now, "exp": now + 300}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, account: str, *, kid: str | None = None, **overrides: Any) -> str:
        kid = kid or self.current
        return jwt.encode(
            self.claims(account, **overrides), self.keys[kid], algorithm="RS256",
            headers={"kid": kid},
        )  # fmt: skip

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid in self.published:
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.keys[kid].public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": keys}


@dataclass
class JwksServer:
    """Serves ``issuer``'s JWKS at ``url``; ``delay_seconds`` holds each answer back."""

    issuer: Issuer
    port: int = field(default_factory=free_port)
    fetches: int = 0
    delay_seconds: float = 0.0
    status: int = 200

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/jwks.json"

    @contextlib.contextmanager
    def running(self) -> Iterator[JwksServer]:
        served = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                served.fetches += 1
                time.sleep(served.delay_seconds)
                body = json.dumps(served.issuer.jwks()).encode()
                self.send_response(served.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        with serving_in_a_thread(self.port, Handler, daemon_threads=True):
            yield self


def jwt_config_text(jwks_url: str, **extra: str) -> str:
    """An [identity] table in jwt mode for ``jwks_url`` (TOML, to append to a config)."""
    lines = [
        "[identity]", 'mode = "jwt"', "", "[identity.jwt]", f'issuer = "{ISSUER}"',
        f'audience = "{AUDIENCE}"', 'algorithms = ["RS256"]', f'jwks_url = "{jwks_url}"',
    ]  # fmt: skip
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"
