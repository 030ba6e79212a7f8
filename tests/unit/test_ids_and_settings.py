from __future__ import annotations

import uuid

import pytest

from quotagate.errors import ConfigError, InvalidAccountId
from quotagate.ids import check_account_id, new_id
from quotagate.settings import Settings, redact


def test_ids_are_unique_sortable_uuid7() -> None:
    made = [new_id() for _ in range(20_000)]
    assert len(set(made)) == len(made)
    assert made == sorted(made)
    assert all(uuid.UUID(i).version == 7 for i in made[:100])


@pytest.mark.parametrize("good", ["a", "A-z_0.9:@x", "x" * 128])
def test_account_ids_accepted(good: str) -> None:
    assert check_account_id(good) == good


@pytest.mark.parametrize("bad", ["", "x" * 129, "a b", "a/b", "é", "a\n"])
def test_account_ids_refused(bad: str) -> None:
    with pytest.raises(InvalidAccountId):
        check_account_id(bad)


def test_settings_defaults_and_secrets() -> None:
    s = Settings.from_env({})
    assert s.redis_url == s.queue_url == "redis://127.0.0.1:6379/0"
    assert s.explicit == frozenset()
    s = Settings.from_env({"QUOTAGATE_DATABASE_URL": "postgresql://u:hunter2@db/x"})
    assert "hunter2" not in repr(s)
    assert redact(s.database_url) == "postgresql://u:***@db/x"
    assert s.explicit == {"database_url"}


def test_settings_refuse_wrong_schemes() -> None:
    with pytest.raises(ConfigError, match="QUOTAGATE_REDIS_URL"):
        Settings.from_env({"QUOTAGATE_REDIS_URL": "http://x"})
    with pytest.raises(ConfigError, match="QUOTAGATE_DATABASE_URL") as info:
        Settings.from_env({"QUOTAGATE_DATABASE_URL": "mysql://u:hunter2@db/x"})
    assert "hunter2" not in str(info.value)


def test_gateway_workers_default_to_the_cores_we_may_use() -> None:
    import os

    assert Settings.from_env({}).workers == min(len(os.sched_getaffinity(0)), 64)
    assert Settings.from_env({"QUOTAGATE_WORKERS": "3"}).workers == 3
    with pytest.raises(ConfigError, match="QUOTAGATE_WORKERS"):
        Settings.from_env({"QUOTAGATE_WORKERS": "0"})
