"""Schemathesis against /openapi.json on a live gateway: no 5xx, every 4xx a problem document.

Bounded (a few examples per operation) so that it stays a fast part of the suite; run it longer
with ``QUOTAGATE_FUZZ_EXAMPLES=500 pytest tests/api/test_openapi_fuzz.py``.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.gateway import GatewayServer

EXAMPLES = int(os.environ.get("QUOTAGATE_FUZZ_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def api_schema(gateway: GatewayServer) -> Any:
    return schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")


@pytest.fixture(scope="module")
def known_account(gateway: GatewayServer, api_keys: dict[str, str]) -> str:
    """An account that exists, so that some generated requests reach the engine's checks."""
    account_id = "fuzz-account"
    headers = {"Authorization": f"Bearer {api_keys['admin']}"}
    httpx.put(
        f"{gateway.url}/v1/accounts/{account_id}", json={"tier": "enterprise"}, headers=headers
    )
    return account_id


def check_answer(response: Any, method: str) -> None:
    assert response.status_code < 500 or response.status_code == 503, response.text
    if method.upper() == "HEAD":  # no body to look into
        if response.status_code >= 400:
            assert response.headers["content-type"] == ["application/problem+json"]
        return
    if response.status_code == 503:
        # Only the documented, backend-related 503s: never a crash in disguise.
        assert response.json()["code"] in ("backend_unavailable", "account_not_loaded")
    if 400 <= response.status_code < 500:
        assert response.headers["content-type"] == ["application/problem+json"], response.text
        problem = response.json()
        assert problem["status"] == response.status_code
        assert isinstance(problem["code"], str) and problem["code"]


def test_no_5xx_and_problems_for_4xx(
    api_schema: Any, api_keys: dict[str, str], known_account: str
) -> None:
    # schemathesis's pytest plugin does not run under this pytest; its strategies do.
    keys = {"Authorization": f"Bearer {api_keys['admin']}", "X-Quotagate-Key": api_keys["hook"]}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 25
    for operation in operations:

        @given(case=operation.as_strategy(), known=st.booleans())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case: Any, known: bool) -> None:
            if known and case.path_parameters and "account_id" in case.path_parameters:
                case.path_parameters["account_id"] = known_account
            response = case.call(headers={**keys, **(case.headers or {})})
            check_answer(response, case.method)

        run()
