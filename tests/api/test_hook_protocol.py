"""The hook answered in the HTTP protocol (quotagate.api.protocol), byte by byte on a socket:
pipelined requests answered in order, request bodies read past, HEAD without a body, the
connection closed when asked, an unexpected error a 500 problem on a connection that goes on,
and the same answer as the app gives through ASGI."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any, BinaryIO

import httpx
import pytest
from tests.api.helpers import balance, create_account
from tests.support.gateway import GatewayServer, new_account_id

from quotagate.api.front import Front
from quotagate.api.routes.hook import Hook
from quotagate.config import load_config


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    """In the order sent, names in lower case."""
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name]
        assert len(values) <= 1, (name, self.headers)
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)

    def comparable(self) -> list[tuple[str, str]]:
        """Its headers but the date, and the request id that each request gets anew (kept in
        its place, without its value)."""
        return [
            (name, "<id>" if name == "x-request-id" else value)
            for name, value in self.headers
            if name != "date"
        ]


class Conn:
    """One client connection, written to and read from as raw HTTP/1.1."""

    def __init__(self, gateway: GatewayServer) -> None:
        self.sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=5)
        self.rfile: BinaryIO = self.sock.makefile("rb")

    def send(self, *requests: bytes) -> None:
        self.sock.sendall(b"".join(requests))

    def reply(self, *, head: bool = False) -> Reply:
        """The next reply on the connection; ``head``: the answer to a HEAD (no body follows)."""
        status_line = self.rfile.readline()
        assert status_line.startswith(b"HTTP/1.1 ") and status_line.endswith(b"\r\n"), status_line
        headers = []
        while (line := self.rfile.readline()) != b"\r\n":
            assert line.endswith(b"\r\n"), line
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.lower(), value.strip()))
        reply = Reply(int(status_line.split()[1]), headers, b"")
        assert reply.header("transfer-encoding") is None
        length = reply.header("content-length")
        assert length is not None, headers
        if not head:
            reply.body = self.rfile.read(int(length))
            assert len(reply.body) == int(length)
        return reply

    def closed_by_server(self) -> bool:
        """Whether the server has closed the connection (and sent nothing more)."""
        return self.rfile.read(1) == b""

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


def request(
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    *,
    body: bytes | None = None,
    version: str = "1.1",
) -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: quotagate.test"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body is not None and "Transfer-Encoding" not in (headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def hook(
    api_keys: dict[str, str], acct: str | None, resource: str | None = "api_call", **extra: str
) -> dict[str, str]:
    """A hook request's headers: one ``resource`` (an api_call costs 1) for ``acct``."""
    headers = {"X-Quotagate-Key": api_keys["hook"]}
    if resource is not None:
        headers["X-Quota-Resource"] = resource
    if acct is not None:
        headers["X-Account-Id"] = acct
    return {**headers, **{k.replace("_", "-"): v for k, v in extra.items()}}


def test_pipelined_requests_are_answered_in_order(
    conn: Conn, http: httpx.Client, api_keys: dict[str, str]
) -> None:
    acct = create_account(http, api_keys["admin"])
    headers = hook(api_keys, acct)
    conn.send(
        request("GET", "/v1/authz", headers),
        request("GET", "/healthz"),
        request("GET", "/v1/authz/api/x", headers),
        request("GET", "/healthz"),
    )
    first, health, second, again = (conn.reply() for _ in range(4))
    assert (first.status, health.status, second.status, again.status) == (200, 200, 200, 200)
    assert first.header("x-quota-remaining") == "999"
    assert health.json() == again.json() == {"status": "ok"}
    assert second.header("x-quota-remaining") == "998"
    assert balance(http, api_keys["admin"], acct) == 998


def test_a_request_body_is_read_past_not_taken_for_the_next_request(
    conn: Conn, http: httpx.Client, api_keys: dict[str, str]
) -> None:
    acct = create_account(http, api_keys["admin"])
    headers = hook(api_keys, acct)
    chunked = {**headers, "Transfer-Encoding": "chunked"}
    conn.send(
        request("POST", "/v1/authz", headers, body=b"hello"),
        request("POST", "/v1/authz", chunked, body=b"5\r\nhello\r\n0\r\n\r\n"),
        request("GET", "/v1/authz", headers),
    )
    remaining = [conn.reply().header("x-quota-remaining") for _ in range(3)]
    assert remaining == ["999", "998", "997"]
    # A body that follows after the answer (the hook does not wait for it) is read past too.
    head, _, body = request("POST", "/v1/authz", headers, body=b"hello").partition(b"\r\n\r\n")
    conn.send(head + b"\r\n\r\n")
    assert conn.reply().header("x-quota-remaining") == "996"
    conn.send(body, request("GET", "/v1/authz", headers))
    assert conn.reply().header("x-quota-remaining") == "995"
    assert balance(http, api_keys["admin"], acct) == 995


def test_head_is_answered_without_a_body(
    conn: Conn, http: httpx.Client, api_keys: dict[str, str]
) -> None:
    acct = create_account(http, api_keys["admin"])
    conn.send(
        request("HEAD", "/v1/authz", hook(api_keys, acct)),
        request("HEAD", "/v1/authz", hook(api_keys, None)),  # refused: a problem document's length
        request("GET", "/v1/authz", hook(api_keys, None)),
        request("GET", "/v1/authz", hook(api_keys, acct)),
    )
    allowed = conn.reply(head=True)
    assert allowed.status == 200
    assert allowed.header("content-length") == "0"
    assert allowed.header("x-quota-remaining") == "999"
    refused_head = conn.reply(head=True)
    refused = conn.reply()
    assert refused_head.status == refused.status == 401
    assert refused_head.header("content-length") == str(len(refused.body)) != "0"
    assert refused_head.comparable() == refused.comparable()
    # Had the HEAD answers carried bodies, this reply would not parse where it begins.
    last = conn.reply()
    assert (last.status, last.header("x-quota-remaining")) == (200, "998")
    assert balance(http, api_keys["admin"], acct) == 998


@pytest.mark.parametrize(
    ("version", "connection"),
    [("1.1", "close"), ("1.0", None), ("1.0", "keep-alive")],
)
def test_the_connection_closes_when_the_request_asks_or_cannot_keep_it(
    conn: Conn,
    http: httpx.Client,
    api_keys: dict[str, str],
    version: str,
    connection: str | None,
) -> None:
    acct = create_account(http, api_keys["admin"])
    headers = hook(api_keys, acct)
    if connection is not None:
        headers["Connection"] = connection
    # A request pipelined behind it is not answered: the connection ends with the first answer.
    conn.send(
        request("GET", "/v1/authz", headers, version=version),
        request("GET", "/v1/authz", hook(api_keys, acct)),
    )
    reply = conn.reply()
    assert (reply.status, reply.header("x-quota-remaining")) == (200, "999")
    assert reply.header("connection") == "close"
    assert conn.closed_by_server()
    assert balance(http, api_keys["admin"], acct) == 999


def test_a_kept_connection_says_nothing_of_closing(
    conn: Conn, http: httpx.Client, api_keys: dict[str, str]
) -> None:
    acct = create_account(http, api_keys["admin"])
    for remaining in ("999", "998"):
        conn.send(request("GET", "/v1/authz", hook(api_keys, acct, Connection="keep-alive")))
        reply = conn.reply()
        assert reply.header("x-quota-remaining") == remaining
        assert reply.header("connection") is None


@pytest.mark.parametrize(
    "where",
    [
        "_charge_for",  # before the charge, while the request is read
        "_allowed",  # after it, in the charge's done-callback
    ],
)
def test_an_unexpected_error_is_a_500_problem_and_the_connection_goes_on(
    conn: Conn,
    http: httpx.Client,
    api_keys: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    acct = create_account(http, api_keys["admin"])

    def broken(*args: object) -> object:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Hook, where, broken)
    conn.send(request("GET", "/v1/authz", hook(api_keys, acct)))
    reply = conn.reply()
    assert reply.status == 500
    assert reply.header("content-type") == "application/problem+json"
    problem = reply.json()
    assert (problem["status"], problem["code"]) == (500, "internal_error")
    assert "a bug" not in reply.body.decode()
    assert reply.header("connection") is None
    monkeypatch.undo()
    conn.send(request("GET", "/v1/authz", hook(api_keys, acct)))
    reply = conn.reply()
    # Broken after the charge, the charge stands (as a lost answer would leave it).
    remaining = "999" if where == "_charge_for" else "998"
    assert (reply.status, reply.header("x-quota-remaining")) == (200, remaining)


def test_answers_are_the_same_as_through_asgi(
    conn: Conn,
    gateway: GatewayServer,
    http: httpx.Client,
    api_keys: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An absolute-form target is not taken by the protocol: the app answers it through ASGI,
    with the same hook. Both answers must be the same, byte for byte but the date."""
    acct = create_account(http, api_keys["admin"])
    through_asgi = 0
    call = Front.asgi

    async def counted(self: Front, *args: Any) -> None:
        nonlocal through_asgi
        through_asgi += 1
        await call(self, *args)

    monkeypatch.setattr(Front, "asgi", counted)
    deny_status = load_config().authz.deny_status
    cases = [
        ("GET", hook(api_keys, acct, X_Quota_Units="1000000"), deny_status),  # insufficient
        ("HEAD", hook(api_keys, acct, X_Quota_Units="1000000"), deny_status),
        ("GET", hook(api_keys, None), 401),  # no identity
        ("GET", {**hook(api_keys, acct), "X-Quotagate-Key": "qg_nope"}, 401),  # bad key
        ("GET", hook(api_keys, new_account_id()), 403),  # unknown account
        ("GET", hook(api_keys, "bad id!"), 403),
        ("POST", hook(api_keys, acct, "gold"), 422),  # unknown resource
        ("GET", hook(api_keys, acct, X_Quota_Units="0"), 422),
        # Allowed at cost 0 (no route prices it): the same answer twice.
        ("GET", hook(api_keys, acct, None, X_Original_URI="/static/a.css"), 200),
    ]
    for method, headers, status in cases:
        before = through_asgi
        conn.send(request(method, "/v1/authz/api/x", headers))
        fast = conn.reply(head=method == "HEAD")
        assert through_asgi == before
        conn.send(request(method, f"http://127.0.0.1:{gateway.port}/v1/authz/api/x", headers))
        slow = conn.reply(head=method == "HEAD")
        assert through_asgi == before + 1
        assert fast.status == slow.status == status, (method, headers, fast, slow)
        assert fast.comparable() == slow.comparable()
        assert fast.header("date") is not None and slow.header("date") is not None
        assert fast.body == slow.body
        if status == deny_status:
            assert fast.header("x-quota-reason") == "insufficient_credits"
            assert fast.header("content-type") == "application/problem+json"
            if method != "HEAD":
                assert fast.json()["code"] == "insufficient_credits"
    assert balance(http, api_keys["admin"], acct) == 1000
