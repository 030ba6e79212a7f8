"""The access line (quotagate.api.access): one record per request, on the hook, the front's
service endpoints and the routes served through ASGI, with the request id every answer
carries; nothing made when the level leaves INFO out."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import httpx
import pytest
from tests.api.helpers import bearer, create_account
from tests.api.test_hook_protocol import Conn
from tests.unit.test_logs import parse_logfmt

from quotagate.api import access
from quotagate.logs import JsonFormatter, LogfmtFormatter

FIELDS = ("request_id", "method", "path", "route", "status", "account", "decision", "cost",
          "latency_ms")  # fmt: skip


def _access(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        {name: getattr(r, name) for name in FIELDS}
        for r in caplog.records
        if r.name == access.ACCESS_LOGGER.name
    ]


def _hook(key: str, account_id: str, **headers: str) -> dict[str, str]:
    return {"X-Quotagate-Key": key, "X-Account-Id": account_id, **headers}


def test_a_hook_charge_logs_its_account_decision_and_cost(
    http: httpx.Client, api_keys: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=access.ACCESS_LOGGER.name)
    acct = create_account(http, api_keys["admin"], tier="free")
    caplog.clear()
    hook = api_keys["hook"]
    allowed = http.get(
        "/v1/authz",
        headers=_hook(hook, acct, **{"X-Request-Id": "req-1", "X-Original-URI": "/api/p"}),
    )
    denied = http.get(
        "/v1/authz", headers=_hook(hook, acct, **{"X-Quota-Resource": "api_call",
                                                  "X-Quota-Units": "1000"})
    )  # fmt: skip
    assert (allowed.status_code, denied.status_code) == (200, 402)
    assert allowed.headers["x-request-id"] == "req-1"
    made = denied.headers["x-request-id"]
    [first, second] = _access(caplog)
    assert first == {
        "request_id": "req-1", "method": "GET", "path": "/v1/authz", "route": "authz",
        "status": 200, "account": acct, "decision": "allowed", "cost": 1,
        "latency_ms": first["latency_ms"],
    }  # fmt: skip
    assert isinstance(first["latency_ms"], float) and 0 <= first["latency_ms"] < 5000
    assert second["request_id"] == made  # one made here: the process's part, then a count
    assert re.fullmatch(r"[0-9a-f]{16}-[0-9a-f]+", made), made
    assert (second["status"], second["decision"], second["cost"]) == (402, "denied", None)
    assert second["account"] == acct


def test_the_service_endpoints_log_cost_and_a_check_that_says_no(
    http: httpx.Client, api_keys: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=access.ACCESS_LOGGER.name)
    acct = create_account(http, api_keys["admin"], tier="free")
    service = bearer(api_keys["service"])
    caplog.clear()
    base = f"/v1/accounts/{acct}"
    consumed = http.post(f"{base}/consume", json={"resource": "file_upload"}, headers=service)
    check = http.post(f"{base}/check", json={"resource": "api_call", "units": 10**6},
                      headers=service)  # fmt: skip
    hold = http.post(f"{base}/holds", json={"amount": 7}, headers=service)
    captured = http.post(
        f"{base}/holds/{hold.json()['hold_id']}/capture", json={"amount": 5}, headers=service
    )
    refused = http.post(f"{base}/consume", json={"resource": "api_call"},
                        headers=bearer(api_keys["read"]))  # fmt: skip
    read = http.get(base, headers=bearer(api_keys["read"]))
    statuses = [r.status_code for r in (consumed, check, hold, captured, refused, read)]
    assert statuses == [200, 200, 201, 200, 403, 200]
    got = [(r["route"], r["status"], r["account"], r["decision"], r["cost"])
           for r in _access(caplog)]  # fmt: skip
    assert got == [
        ("consume", 200, acct, "allowed", 2),
        ("check", 200, acct, "denied", 10**6),
        ("hold", 201, acct, "allowed", 7),
        ("capture", 200, acct, "allowed", 5),
        ("consume", 403, acct, "denied", None),
        ("get_account", 200, acct, None, None),  # a read: no decision
    ]
    ids = [r["request_id"] for r in _access(caplog)]
    assert ids == [r.headers["x-request-id"] for r in (consumed, check, hold, captured, refused,
                                                        read)]  # fmt: skip
    assert len(set(ids)) == len(ids)


def test_a_request_no_route_takes_is_logged_too(
    http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=access.ACCESS_LOGGER.name)
    caplog.clear()
    answer = http.get("/no/such/path", headers={"X-Request-Id": "x" * 129})
    assert answer.status_code == 404
    [line] = _access(caplog)
    assert line["request_id"] == answer.headers["x-request-id"] != "x" * 129  # too long: a new one
    assert (line["route"], line["status"], line["path"]) == (None, 404, "/no/such/path")


HOSTILE_PATH = b"/v1/accounts/al%22ice%0A%00x%3Dy%20status%3D500/consume"
HOSTILE_ACCOUNT = 'al"ice\n\x00x=y status=500'


def test_a_hostile_path_and_account_stay_in_their_fields(
    conn: Conn, api_keys: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=access.ACCESS_LOGGER.name)
    caplog.clear()
    body = b'{"resource": "api_call"}'
    conn.send(
        b"POST " + HOSTILE_PATH + b" HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
        + api_keys["service"].encode() + b"\r\nX-Request-Id: a\"b=c\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )  # fmt: skip
    reply = conn.reply()
    assert reply.status == 422  # the account id is refused, and logged as it came
    [made] = [r for r in caplog.records if r.name == access.ACCESS_LOGGER.name]
    assert (made.account, made.request_id) == (HOSTILE_ACCOUNT, 'a"b=c')  # type: ignore[attr-defined]

    line = JsonFormatter().format(made)
    assert len(line.splitlines()) == 1 and line.isascii()
    parsed = json.loads(line)
    assert (parsed["account"], parsed["path"]) == (HOSTILE_ACCOUNT, HOSTILE_PATH.decode())
    assert (parsed["status"], parsed["request_id"]) == (422, 'a"b=c')

    line = LogfmtFormatter().format(made)
    assert len(line.splitlines()) == 1 and line.isascii()
    parsed = parse_logfmt(line)
    assert (parsed["account"], parsed["status"], parsed["request_id"]) == (
        HOSTILE_ACCOUNT, "422", 'a"b=c',
    )  # fmt: skip
    for secret in api_keys.values():
        assert secret not in line


def test_no_record_is_made_when_the_level_leaves_info_out(
    http: httpx.Client,
    api_keys: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    acct = create_account(http, api_keys["admin"])
    caplog.set_level(logging.WARNING, logger=access.ACCESS_LOGGER.name)
    made: list[object] = []
    monkeypatch.setattr(access.Access, "_write", lambda *args: made.append(args))
    answer = http.get("/v1/authz", headers=_hook(api_keys["hook"], acct))
    assert answer.status_code == 200 and answer.headers["x-request-id"]  # still echoed
    assert made == []
    caplog.set_level(logging.INFO, logger=access.ACCESS_LOGGER.name)
    http.get("/v1/authz", headers=_hook(api_keys["hook"], acct))
    assert len(made) == 1
