"""The shortcuts of the hot path give exactly what the long way gives."""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quotagate import ids
from quotagate.api.priced_path import _canonical, normalized_path
from quotagate.auth.cache import KeyCache
from quotagate.auth.keys import ApiKey, hash_key, new_key
from quotagate.engine.keys import KeySpace
from quotagate.errors import InvalidPath, Unauthorized


def _normalized_the_long_way(uri: str) -> str | None:
    """What every step of the normalisation gives; None for a refused path."""
    try:
        return _canonical(uri.partition("?")[0].partition("#")[0])
    except InvalidPath:
        return None


def _normalized(uri: str) -> str | None:
    try:
        return normalized_path(uri)
    except InvalidPath:
        return None


@given(st.text(alphabet="/.;%?#aB-_~2F\\ ", max_size=24))
def test_plain_paths_skip_the_long_way_with_the_same_result(uri: str) -> None:
    assert _normalized(uri) == _normalized_the_long_way(uri)


@given(st.text(max_size=40))
def test_any_text_normalizes_as_the_long_way(uri: str) -> None:
    assert _normalized(uri) == _normalized_the_long_way(uri)


def test_new_id_is_the_uuid_text_of_its_value() -> None:
    for made in (ids.new_id() for _ in range(1000)):
        assert str(uuid.UUID(made)) == made
        assert uuid.UUID(made).version == 7 and uuid.UUID(made).variant == uuid.RFC_4122


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        os.write(write, "\n".join(ids.new_id() for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    mine = [ids.new_id() for _ in range(50)]
    with os.fdopen(read) as f:
        theirs = f.read().split("\n")
    os.waitpid(pid, 0)
    assert len(theirs) == 50
    # Same millisecond is likely: the random bits must still differ.
    assert not {i[-12:] for i in mine} & {i[-12:] for i in theirs}


def test_script_keys_are_the_account_keys_in_script_order() -> None:
    ks = KeySpace("qgtest", 16)
    for account, idem in (("a1", None), ("a1", "req-1"), ("a1", None), ("b:2@x", "k")):
        assert list(ks.script_keys(account, idem)) == ks.account(account, idem).as_list()


def _cache(*keys: ApiKey) -> KeyCache:
    cache = KeyCache(store=None, redis=None, prefix="qgtest")  # type: ignore[arg-type]
    cache._install(keys)
    return cache


def test_a_verified_key_stops_working_once_a_load_no_longer_has_it() -> None:
    key_id, text = new_key()
    stored = ApiKey(key_id, "k", hash_key(text), frozenset({"hook"}))
    cache = _cache(stored)
    assert cache.authorize(text, "hook") is stored
    assert cache.authorize(text, "hook") is stored  # remembered
    cache._install([])  # revoked: the next load lacks it
    with pytest.raises(Unauthorized):
        cache.authorize(text, "hook")


def test_a_wrong_secret_is_never_remembered() -> None:
    key_id, text = new_key()
    cache = _cache(ApiKey(key_id, "k", hash_key(text), frozenset({"hook"})))
    forged = text[:-4] + ("AAAA" if not text.endswith("AAAA") else "BBBB")
    for _ in range(2):
        with pytest.raises(Unauthorized):
            cache.authenticate(forged)
    assert cache.authenticate(text).id == key_id
