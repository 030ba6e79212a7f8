"""The load generators send what they are told, count what comes back, and fill accounts in."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from quotagate.bench.load import Accounts, HttpLoad, LoadResult, percentile
from quotagate.bench.pyload import run_pyload
from quotagate.bench.wrk import lua_script, run_wrk


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[tuple[str, str, str | None, bytes]]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.seen.append((self.command, self.path, self.headers.get("X-Account-Id"), body))
        status = 402 if "deny" in self.path else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = _answer
    do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[tuple[str, str, str | None, bytes]]]]:
    seen: list[tuple[str, str, str | None, bytes]] = []
    handler = type("Handler", (_Recorder,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


SPREAD = HttpLoad(
    "POST",
    "/v1/accounts/{account}/consume",
    {"X-Account-Id": "{account}"},
    body='{"account":"{account}"}',
    accounts=Accounts("acct-", 5),
)
NAMES = {f"acct-{i:06d}" for i in range(5)}


def _run(generator: str, load: HttpLoad, url: str) -> LoadResult:
    if generator == "wrk":
        return run_wrk(load, url, duration_s=1, concurrency=2, threads=1)
    return run_pyload(load, url, duration_s=1, concurrency=2)


GENERATORS = [
    "pyload",
    pytest.param(
        "wrk", marks=pytest.mark.skipif(not shutil.which("wrk"), reason="wrk not installed")
    ),
]


@pytest.mark.parametrize("generator", GENERATORS)
def test_spread_load_fills_in_a_random_account_per_request(
    generator: str, recorder: tuple[str, list[tuple[str, str, str | None, bytes]]]
) -> None:
    url, seen = recorder
    result = _run(generator, SPREAD, url)
    assert result.generator == generator
    assert result.requests > 10
    assert result.errors == 0
    assert result.p50_ms is not None and result.p99_ms is not None
    assert 0 < result.p50_ms <= result.p99_ms
    accounts = set()
    for method, path, header, body in seen:
        assert method == "POST"
        account = path.split("/")[3]
        assert header == account
        assert body == f'{{"account":"{account}"}}'.encode()
        accounts.add(account)
    assert accounts <= NAMES
    assert len(accounts) > 1


@pytest.mark.parametrize("generator", GENERATORS)
def test_answers_with_another_status_count_as_errors(
    generator: str, recorder: tuple[str, list[tuple[str, str, str | None, bytes]]]
) -> None:
    url, seen = recorder
    result = _run(generator, HttpLoad("GET", "/deny", accounts=Accounts("hot")), url)
    assert result.requests == 0
    assert result.errors > 10
    assert all(path == "/deny" for _, path, _, _ in seen)


def test_hot_wrk_script_is_fixed_and_spread_script_picks_accounts() -> None:
    hot = lua_script(
        HttpLoad("GET", "/v1/authz", {"X-Account-Id": "{account}"}, None, Accounts("h"))
    )
    assert 'wrk.headers = {["X-Account-Id"] = "h"}' in hot
    assert "function request" not in hot
    spread = lua_script(SPREAD)
    assert "function request" in spread
    assert "COUNT = 5" in spread


def test_percentile() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.99) == 7.0
