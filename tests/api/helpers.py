"""Small helpers for the HTTP tests."""

from __future__ import annotations

from typing import Any

import httpx
from tests.support.gateway import new_account_id


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def create_account(http: httpx.Client, admin: str, **body: Any) -> str:
    account_id = new_account_id()
    r = http.put(f"/v1/accounts/{account_id}", json=body or {"tier": "pro"}, headers=bearer(admin))
    assert r.status_code == 201, r.text
    return account_id


def account(http: httpx.Client, admin: str, account_id: str) -> dict[str, Any]:
    r = http.get(f"/v1/accounts/{account_id}", headers=bearer(admin))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def balance(http: httpx.Client, admin: str, account_id: str) -> int:
    return int(account(http, admin, account_id)["balance"])


def assert_problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The answer is an RFC 9457 problem with this status and code."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json", r.headers
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    assert body["code"] == code, body
    assert body["type"] == f"urn:quotagate:problem:{code}"
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body
