"""The hook is answered ahead of Starlette's stack: only its own paths, and an unexpected
error still becomes a logged 500 problem document."""

from __future__ import annotations

import httpx
import pytest
from tests.api.helpers import assert_problem, create_account

from quotagate.api.app import create_app
from quotagate.api.routes.hook import Hook
from quotagate.config import load_config
from quotagate.settings import Settings


def test_only_the_hook_paths_take_the_fast_path(
    http: httpx.Client, api_keys: dict[str, str]
) -> None:
    acct = create_account(http, api_keys["admin"], tier="pro")
    headers = {"X-Quotagate-Key": api_keys["hook"], "X-Account-Id": acct}
    for path in ("/v1/authz", "/v1/authz/api/chat/1"):
        r = http.get(path, headers=headers)
        assert r.status_code == 200, path
        assert r.headers["x-quota-account"] == acct
    for path in ("/v1/authzx", "/v1/authz-other"):
        assert_problem(http.get(path, headers=headers), 404, "not_found")


async def test_an_unexpected_error_in_the_hook_is_a_problem_document(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = create_app(Settings.from_env({}), config=load_config())

    async def broken(self: Hook, scope: object, receive: object, send: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Hook, "__call__", broken)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.get("/v1/authz")  # no lifespan: the hook is reached all the same
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "internal_error"
