"""The key format, its hash and the constant-time check."""

from __future__ import annotations

import pytest

from quotagate.auth.keys import ApiKey, check_scopes, hash_key, key_id_of, matches, new_key
from quotagate.errors import ValidationError


def test_new_keys_are_unique_and_parse() -> None:
    made = [new_key() for _ in range(200)]
    assert len({text for _, text in made}) == 200
    for key_id, text in made:
        assert text.startswith(f"qg_{key_id}_") and len(key_id) == 16
        assert key_id_of(text) == key_id
        assert len(text) > 50


@pytest.mark.parametrize(
    "text",
    [
        "",
        "qg_",
        "qg_short_x",
        "xx_0123456789abcdef_secret",
        "qg_0123456789abcdefXsecret",
        "qg_" + "a" * 300,
    ],
)
def test_malformed_keys_have_no_id(text: str) -> None:
    assert key_id_of(text) is None


def test_matches_only_the_exact_key() -> None:
    key_id, text = new_key()
    stored = ApiKey(key_id, "n", hash_key(text), frozenset({"read"}))
    assert matches(text, stored)
    assert not matches(text + "x", stored)
    assert not matches(text[:-1], stored)
    assert not matches(text, None)
    assert hash_key(text) != text and len(hash_key(text)) == 64


def test_scopes() -> None:
    assert check_scopes(["read", "hook", "read"]) == frozenset({"read", "hook"})
    with pytest.raises(ValidationError, match="unknown: root"):
        check_scopes(["root"])
    with pytest.raises(ValidationError):
        check_scopes([])
    admin = ApiKey("i", "n", "h", frozenset({"admin"}))
    assert all(admin.allows(s) for s in ("admin", "service", "read", "hook"))
    read = ApiKey("i", "n", "h", frozenset({"read"}))
    assert read.allows("read") and not read.allows("service")
