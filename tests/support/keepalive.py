"""Many HTTP/1.1 requests over a few keep-alive connections, for load tests that count answers.

httpx spends about 5 ms of CPU per request when hundreds are in flight at once; on a 2-core
machine the test's own client, not the gateways under test, then sets the pace. This client
writes each request's bytes and reads back the status line, the headers and a Content-Length
body, nothing more: every request still goes through a real socket and a real gateway.

    async with KeepAlive("http://127.0.0.1:8000", connections=100) as client:
        status = await client.send(request_bytes("POST", "/v1/x", {...}, b"{}"))
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

TRANSPORT_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError)
"""What a request that got no answer raises (a connection refused, reset or closed early)."""


def request_bytes(
    method: str, path: str, headers: dict[str, str], body: Any | None = None
) -> bytes:
    """One HTTP/1.1 request with a JSON body (when ``body`` is not None), keep-alive."""
    payload = b"" if body is None else json.dumps(body).encode()
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: gateway",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def exchange(self, request: bytes) -> tuple[int, bool]:
        """Send ``request``; the answer's status and whether the server keeps the connection."""
        self.writer.write(request)
        await self.writer.drain()
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status_line, *header_lines = head.split("\r\n")
        headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        await self.reader.readexactly(int(headers.get("content-length", "0")))
        return int(status_line.split()[1]), headers.get("connection", "").lower() != "close"

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(*TRANSPORT_ERRORS):
            await self.writer.wait_closed()


class KeepAlive:
    """Up to ``connections`` requests in flight to one server, each connection reused."""

    def __init__(self, base_url: str, *, connections: int, timeout_seconds: float = 30) -> None:
        url = urlsplit(base_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.timeout_seconds = timeout_seconds
        self.slots = asyncio.Semaphore(connections)
        self.idle: list[_Connection] = []

    async def send(self, request: bytes) -> int:
        """The answer's status; raises one of TRANSPORT_ERRORS when no answer came back (the
        connection is dropped then, and the next request opens a new one)."""
        async with self.slots:
            connection = self.idle.pop() if self.idle else None
            try:
                async with asyncio.timeout(self.timeout_seconds):
                    if connection is None:
                        connection = _Connection(
                            *await asyncio.open_connection(self.host, self.port)
                        )
                    status, keep = await connection.exchange(request)
            except BaseException:
                if connection is not None:
                    await connection.close()
                raise
            if keep:
                self.idle.append(connection)
            else:
                await connection.close()
            return status

    async def aclose(self) -> None:
        while self.idle:
            await self.idle.pop().close()

    async def __aenter__(self) -> KeepAlive:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
