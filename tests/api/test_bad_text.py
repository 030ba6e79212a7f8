"""Text PostgreSQL cannot store, and metadata nested too deeply, are refused at the edge: a 422
problem naming the field, and nothing written (no balance change, no transaction)."""

from __future__ import annotations

import httpx
import pytest
from tests.api.helpers import account, assert_problem, bearer, create_account

DEEP_ARRAYS = b"[" * 7000 + b"]" * 7000
"""7,000 levels in under 16 KiB: deeper than the JSON decoder's stack allows."""


def _nested(levels: int) -> bytes:
    """Metadata of ``levels`` levels in all (the top object included)."""
    return b'{"a":' * (levels - 1) + b"{}" + b"}" * (levels - 1)


BAD_TEXT = [
    ("NUL in description", rb'"description": "top-up\u0000"', "description"),
    ("NUL in a metadata value", rb'"metadata": {"order": "o-\u0000"}', "metadata"),
    ("NUL in a metadata key", rb'"metadata": {"or\u0000der": 1}', "metadata"),
    ("NUL deep in metadata", rb'"metadata": {"a": [1, {"b": ["\u0000"]}]}', "metadata"),
    ("lone surrogate in description", rb'"description": "\ud800"', None),
    ("lone low surrogate in metadata", rb'"metadata": {"k": "x\udc00"}', None),
    ("metadata 33 levels deep", b'"metadata": ' + _nested(33), "metadata"),
    (
        "metadata 900 levels deep",
        b'"metadata": {"a": ' + b"[" * 899 + b"]" * 899 + b"}",
        "metadata",
    ),
    ("metadata 7000 levels deep", b'"metadata": {"a": ' + DEEP_ARRAYS + b"}", None),
]


@pytest.mark.parametrize(("name", "member", "field"), BAD_TEXT, ids=[c[0] for c in BAD_TEXT])
@pytest.mark.parametrize("operation", ["consume", "grant"])
def test_unstorable_text_is_refused_and_writes_nothing(
    http: httpx.Client,
    api_keys: dict[str, str],
    operation: str,
    name: str,
    member: bytes,
    field: str | None,
) -> None:
    admin = api_keys["admin"]
    acct = create_account(http, admin)
    before = account(http, admin, acct)
    if operation == "consume":
        url, key, body = f"/v1/accounts/{acct}/consume", "service", b'{"resource": "api_call", '
    else:
        url, key, body = f"/v1/accounts/{acct}/credits", "admin", b'{"amount": 5, "type": "grant", '
    r = http.post(
        url,
        content=body + member + b"}",
        headers={**bearer(api_keys[key]), "Content-Type": "application/json"},
    )
    problem = assert_problem(r, 422, "invalid_request")
    assert problem.get("field") == field
    assert account(http, admin, acct) == before


def test_metadata_32_levels_deep_is_accepted(http: httpx.Client, api_keys: dict[str, str]) -> None:
    acct = create_account(http, api_keys["admin"])
    r = http.post(
        f"/v1/accounts/{acct}/consume",
        content=b'{"resource": "api_call", "metadata": ' + _nested(32) + b"}",
        headers={**bearer(api_keys["service"]), "Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text
    assert account(http, api_keys["admin"], acct)["balance"] == 999


def test_the_problem_names_where_the_nul_is(http: httpx.Client, api_keys: dict[str, str]) -> None:
    acct = create_account(http, api_keys["admin"])
    r = http.post(
        f"/v1/accounts/{acct}/consume",
        content=rb'{"resource": "api_call", "metadata": {"a": [1, {"b": "\u0000"}]}}',
        headers={**bearer(api_keys["service"]), "Content-Type": "application/json"},
    )
    problem = assert_problem(r, 422, "invalid_request")
    assert problem["detail"] == ("metadata['a'][1]['b'] contains a NUL character (U+0000)")
