"""`quotagate serve`: uvicorn workers from flags and environment, metrics added up over workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
from tests.api.test_startup import empty_database  # noqa: F401 - fixture
from tests.support.gateway import gateway_settings, new_account_id, open_redis
from tests.support.servers import free_port

from quotagate.metrics import FLUSH_INTERVAL_SECONDS


def serve(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "quotagate.cli.main", "serve", *args],
        env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_ready(url: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("serve did not come up")


def test_two_workers(
    redis_url: str, migrated_database_url: str, key_prefix: str, api_keys: dict[str, str]
) -> None:
    open_redis(gateway_settings(redis_url, migrated_database_url, key_prefix))
    port = free_port()
    env = {
        "QUOTAGATE_REDIS_URL": redis_url, "QUOTAGATE_DATABASE_URL": migrated_database_url,
        "QUOTAGATE_KEY_PREFIX": key_prefix, "QUOTAGATE_PORT": str(port), "QUOTAGATE_WORKERS": "2",
    }  # fmt: skip
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = serve(env, "--host", "127.0.0.1")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        headers = {"Authorization": f"Bearer {api_keys['admin']}"}
        acct = new_account_id()
        # Both workers must have their keys loaded before the counts below mean anything.
        deadline = time.monotonic() + 10
        while httpx.put(f"{url}/v1/accounts/{acct}", json={}, headers=headers).status_code not in (
            200,
            201,
        ):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        with httpx.Client(base_url=url, headers=headers) as http:  # one connection: one worker
            for _ in range(10):
                assert (
                    http.post(
                        f"/v1/accounts/{acct}/consume", json={"resource": "api_call"}
                    ).status_code
                    == 200
                )
        for _ in range(10):  # new connections: spread over the workers
            r = httpx.post(
                f"{url}/v1/accounts/{acct}/consume", json={"resource": "api_call"}, headers=headers
            )
            assert r.status_code == 200
        # Whichever worker answers the scrape (new connections), the count is all of them, once
        # each worker has moved its counts to its file (FLUSH_INTERVAL_SECONDS).
        time.sleep(FLUSH_INTERVAL_SECONDS + 0.5)
        for _ in range(6):
            line = next(
                x for x in httpx.get(f"{url}/metrics").text.splitlines()
                if x.startswith('quotagate_http_requests_total{route="consume",status="200"}')
            )  # fmt: skip
            assert float(line.split()[-1]) == 20.0
        assert httpx.get(f"{url}/v1/accounts/{acct}", headers=headers).json()["balance"] == 80
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def test_refuses_a_schema_behind_in_one_sentence(redis_url: str, empty_database: str) -> None:  # noqa: F811
    proc = serve({"QUOTAGATE_REDIS_URL": redis_url, "QUOTAGATE_DATABASE_URL": empty_database,
                  "QUOTAGATE_PORT": str(free_port())})  # fmt: skip
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.strip() == "error: the ledger database has no schema yet: run `quotagate migrate`"


def test_bad_port_setting(redis_url: str) -> None:
    proc = serve({"QUOTAGATE_PORT": "eighty"})
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "QUOTAGATE_PORT" in err and "Traceback" not in err
