"""HTTP calls to the gateways, each ending in an answer or in "unknown".

An answer is what the gateway said. Unknown is a call whose effect nobody can tell from the
client's side: the connection broke, the call timed out, the client hung up on purpose right
after sending (``send_and_hang_up``), or the gateway said it could not reach Redis (the script
may have run before the reply was lost). Every write the simulation sends carries an
idempotency key, so an unknown call is settled by sending it again with the same key until an
answer comes: that answer is either the replay of the first call or the only application.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

UNKNOWN_STATUSES = frozenset({502, 503, 504})
"""Statuses after which a write may or may not have run."""

DEFINITE_CODES = frozenset({"account_not_loaded", "ledger_unavailable"})
"""503s that say nothing was done: the account awaits recovery, or the answer needs the
ledger, which is down."""

SETTLE_ATTEMPTS = 60
SETTLE_PAUSE_SECONDS = 0.25


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    replayed: bool

    @property
    def code(self) -> str | None:
        return self.body.get("code")

    def same_as(self, other: Answer) -> bool:
        """The same first answer, ``durable`` aside (it says what PostgreSQL did just now)."""

        def strip(body: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in body.items() if k != "durable"}

        return self.status == other.status and strip(self.body) == strip(other.body)


class Unsettled(AssertionError):
    """A write stayed unknown through every retry with its idempotency key."""


class Gateways:
    """One httpx client per gateway; the caller picks which gateway a call goes to."""

    def __init__(self, urls: list[str], keys: dict[str, str]) -> None:
        self.urls = urls
        self.keys = keys
        self.clients = [httpx.AsyncClient(base_url=u, timeout=10) for u in urls]

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()

    def headers(self, scope: str, idempotency_key: str | None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.keys[scope]}"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    async def call(
        self,
        gateway: int,
        method: str,
        path: str,
        *,
        scope: str,
        body: Any = None,
        key: str | None = None,
    ) -> Answer | None:
        """One call; None when its outcome is unknown."""
        client = self.clients[gateway % len(self.clients)]
        content = None if body is None else json.dumps(body)
        try:
            response = await client.request(
                method, path, content=content, headers=self.headers(scope, key)
            )
        except httpx.TransportError:
            return None
        parsed = response.json() if response.content else {}
        if response.status_code in UNKNOWN_STATUSES and parsed.get("code") not in DEFINITE_CODES:
            return None
        replayed = response.headers.get("Idempotent-Replayed") == "true"
        return Answer(response.status_code, parsed, replayed)

    async def settle(
        self, gateway: int, path: str, *, scope: str, body: Any, key: str, method: str = "POST"
    ) -> Answer:
        """Send a write again and again with its idempotency key until it has an answer."""
        for attempt in range(SETTLE_ATTEMPTS):
            answer = await self.call(
                gateway + attempt, method, path, scope=scope, body=body, key=key
            )
            if answer is not None:
                return answer
            await asyncio.sleep(SETTLE_PAUSE_SECONDS)
        raise Unsettled(f"{method} {path} with Idempotency-Key {key} never got an answer")

    async def send_and_hang_up(
        self, gateway: int, path: str, *, scope: str, body: Any, key: str
    ) -> None:
        """Send a whole request, then close the connection without reading the answer: the
        gateway runs the script and finds nobody to tell."""
        url = urlsplit(self.urls[gateway % len(self.urls)])
        content = json.dumps(body).encode()
        head = [f"POST {path} HTTP/1.1", f"Host: {url.netloc}", "Content-Type: application/json",
                f"Content-Length: {len(content)}", "Connection: close"]  # fmt: skip
        head += [f"{name}: {value}" for name, value in self.headers(scope, key).items()]
        _, writer = await asyncio.open_connection(url.hostname, url.port)
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + content)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
