from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from quotagate.engine.connection import is_cluster_url, node_options, seed_nodes, single_node_url
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


CLUSTER_QUEUE_SENTENCE = (
    "QUOTAGATE_QUEUE_URL must name a standalone Redis for the job queues when "
    "QUOTAGATE_REDIS_URL is a Redis Cluster (RQ does not run on a cluster)"
)


def test_a_cluster_url_needs_a_queue_url_of_a_standalone_redis() -> None:
    cluster = "rediss+cluster://:pw@10.0.0.1:6379,10.0.0.2:6380"
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"QUOTAGATE_REDIS_URL": cluster})
    assert str(refused.value) == CLUSTER_QUEUE_SENTENCE
    with pytest.raises(ConfigError, match=r"^QUOTAGATE_QUEUE_URL: .* is not a redis://"):
        Settings.from_env({"QUOTAGATE_REDIS_URL": cluster, "QUOTAGATE_QUEUE_URL": cluster})
    settings = Settings.from_env(
        {"QUOTAGATE_REDIS_URL": cluster, "QUOTAGATE_QUEUE_URL": "redis://10.0.0.9:6379/0"}
    )
    assert (str(settings.redis_url), str(settings.queue_url)) == (
        cluster,
        "redis://10.0.0.9:6379/0",
    )


def test_a_cluster_url_names_its_seeds_and_its_options_for_every_node() -> None:
    url = "rediss+cluster://user:pw@10.0.0.1:6379,[::1]:6380,host-c/?ssl_cert_reqs=none"
    assert seed_nodes(url) == [("10.0.0.1", 6379), ("::1", 6380), ("host-c", 6379)]
    assert single_node_url(url) == "rediss://user:pw@10.0.0.1:6379/?ssl_cert_reqs=none"
    assert node_options(url) == {
        "username": "user", "password": "pw", "ssl": True, "ssl_cert_reqs": "none",
    }  # fmt: skip
    assert is_cluster_url(url) and not is_cluster_url("redis://10.0.0.1:6379/0")


def test_a_gateway_on_a_cluster_without_a_queue_url_stops_with_one_sentence() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUOTAGATE_")}
    env["QUOTAGATE_REDIS_URL"] = "redis+cluster://127.0.0.1:7000,127.0.0.1:7001"
    done = subprocess.run(
        [sys.executable, "-m", "quotagate.cli.main", "serve"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {CLUSTER_QUEUE_SENTENCE}"
