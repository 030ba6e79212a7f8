"""Schemathesis against /openapi.json on a live gateway, with every key scope (admin, service,
read, hook, and none): no 5xx, every 4xx a problem document, and the document and the server
agree, every check on (answers match their schemas, valid data is accepted, invalid data
refused).

Bounded (a few examples per operation, mode and key) so that it stays a part of the suite of
a minute or two; run it longer with
``QUOTAGATE_FUZZ_EXAMPLES=200 pytest tests/api/test_openapi_fuzz.py``.
"""

from __future__ import annotations

import os
import re
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from tests.support.gateway import GatewayServer

from quotagate.config import load_config

EXAMPLES = int(os.environ.get("QUOTAGATE_FUZZ_EXAMPLES", "6"))

CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            # Refusals that depend on the books, not on the request's form: a well-formed
            # request may still find too few credits (402), a spent hold or a balance at its
            # cap (409/422 codes below), or the account's partition awaiting recovery (503).
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "401", "402", "403", "404", "409", "429", "503"],
            },
        }
    }
)
STATE_REFUSALS = frozenset({"capture_exceeds_hold", "balance_limit_exceeded"})
"""422 codes a request earns by the state it meets, whatever its form."""


@pytest.fixture(scope="module")
def api_schema(gateway: GatewayServer) -> Any:
    return schemathesis.openapi.from_url(f"{gateway.url}/openapi.json", config=CONFIG)


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


def refused_by_state(response: Any) -> bool:
    if response.status_code != 422:
        return False
    return response.json().get("code") in STATE_REFUSALS


KEYS = ["admin", "service", "read", "hook", None]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("scope", KEYS)
def test_the_document_and_the_server_agree(
    api_schema: Any,
    api_keys: dict[str, str],
    known_account: str,
    scope: str | None,
    mode: GenerationMode,
) -> None:
    # schemathesis's pytest plugin does not run under this pytest; its strategies do.
    keys = {}
    if scope is not None:
        keys = {"Authorization": f"Bearer {api_keys[scope]}", "X-Quotagate-Key": api_keys[scope]}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 25
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode), known=st.booleans())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case: Any, known: bool) -> None:
            # What a negative case got wrong on purpose stays wrong: no known account in a
            # negated path, no key added to negated headers (a missing key may be the point).
            negated = {
                location.value
                for location, component in case.meta.components.items()
                if component.mode is GenerationMode.NEGATIVE
            }
            path = case.path_parameters
            if known and path and "account_id" in path and "path" not in negated:
                path["account_id"] = known_account
            headers = {**({} if "header" in negated else keys), **(case.headers or {})}
            response = case.call(headers=headers)
            check_answer(response, case.method)
            if not refused_by_state(response):
                case.validate_response(response, headers=headers)

        try:
            run()
        except Unsatisfiable:
            # Nothing to get wrong in a request without parameters or body (/healthz...).
            raw = operation.definition.raw
            assert mode is GenerationMode.NEGATIVE and not raw.get("parameters"), operation.label
            assert not raw.get("requestBody"), operation.label


def test_the_document_names_only_what_the_config_has(api_schema: Any) -> None:
    config = load_config()
    schemas = api_schema.raw_schema["components"]["schemas"]
    tier = schemas["AccountUpsert"]["properties"]["tier"]
    assert tier == {"anyOf": [{"enum": sorted(config.tiers)}, {"type": "null"}]}
    assert schemas["ConsumeRequest"]["properties"]["resource"] == {"enum": sorted(config.resources)}
    hook = api_schema.raw_schema["paths"]["/v1/authz"]["get"]["parameters"]
    (units,) = [p["schema"]["pattern"] for p in hook if p["name"] == "X-Quota-Units"]
    for value, valid in (("1", True), ("10", True), ("1000000000000", True), ("0", False),
                         ("01", False), ("1000000000001", False), ("9999999999999", False)):  # fmt: skip
        assert bool(re.fullmatch(units, value)) is valid, value
    refs = set(_refs(api_schema.raw_schema))
    assert {r.rsplit("/", 1)[1] for r in refs} <= set(schemas), "a $ref names no schema"


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []
