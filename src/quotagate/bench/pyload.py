"""Our own load generator, for machines without wrk: asyncio protocols over raw sockets.

It runs in a process of its own (``python -m quotagate.bench.pyload``, the spec as JSON on
stdin, the result as JSON on stdout) so that it never shares an event loop with what it
measures. Each connection is a closed loop over HTTP/1.1 keep-alive: write a request, parse the
answer (status line and Content-Length, nothing more), record the latency, write the next.
Being Python, it tops out well below wrk; ratios between rows stay comparable because every row
of a run uses the same generator.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlsplit

from quotagate.bench.load import ACCOUNT, Accounts, HttpLoad, LoadResult, percentile

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


def request_maker(load: HttpLoad, host: str) -> Callable[[], bytes]:
    """A function returning the bytes of the next request (a random account when spread)."""
    accounts = load.accounts
    head = [f"{load.method} {load.path} HTTP/1.1", f"Host: {host}"]
    head += [f"{k}: {v}" for k, v in load.headers.items()]
    body = (load.body or "").encode()
    if load.body is not None:
        # Account ids of one stem share a length: the first one gives every body's length.
        sample = (accounts.name(0) if accounts else "").encode()
        length = len(body.replace(ACCOUNT.encode(), sample))
        head += ["Content-Type: application/json", f"Content-Length: {length}"]
    template = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    if accounts is None or accounts.hot:
        fixed = template.replace(ACCOUNT.encode(), (accounts.name(0) if accounts else "").encode())
        return lambda: fixed
    marker, count, rand = ACCOUNT.encode(), accounts.count, random.randrange
    names = [accounts.name(i).encode() for i in range(count)]
    return lambda: template.replace(marker, names[rand(count)])


class _Connection(asyncio.Protocol):
    def __init__(self, make: Callable[[], bytes], stats: _Stats) -> None:
        self.make = make
        self.stats = stats
        self.buffer = b""
        self.sent_ns = 0
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        if self.stats.stopping:
            self.transport.close()
            return
        self.sent_ns = time.perf_counter_ns()
        self.transport.write(self.make())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            match = _CONTENT_LENGTH.search(self.buffer, 0, end + 2)
            length = int(match.group(1)) if match else 0
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            status = int(self.buffer[9:12])
            self.buffer = self.buffer[total:]
            self.stats.record(status, time.perf_counter_ns() - self.sent_ns)
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.stats.stopping:
            self.stats.errors += 1
        if not self.closed.done():
            self.closed.set_result(None)


class _Stats:
    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.measuring = False
        self.stopping = False
        self.ok = 0
        self.errors = 0
        self.latencies_ns: list[int] = []

    def record(self, status: int, latency_ns: int) -> None:
        if not self.measuring:
            return
        if status == self.expect:
            self.ok += 1
            self.latencies_ns.append(latency_ns)
        else:
            self.errors += 1


async def generate(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the load described by ``spec`` (see :func:`run_pyload`); the result as a dict."""
    load = HttpLoad(
        method=spec["method"],
        path=spec["path"],
        headers=spec["headers"],
        body=spec["body"],
        accounts=Accounts(**spec["accounts"]) if spec["accounts"] else None,
    )
    url = urlsplit(spec["base_url"])
    host, port = url.hostname or "127.0.0.1", url.port or 80
    stats = _Stats(spec["expect"])
    loop = asyncio.get_running_loop()
    make = request_maker(load, f"{host}:{port}")
    conns = []
    for _ in range(spec["concurrency"]):
        _, proto = await loop.create_connection(lambda: _Connection(make, stats), host, port)
        conns.append(proto)
    await asyncio.sleep(spec["warmup_s"])
    stats.measuring = True
    start = time.perf_counter()
    await asyncio.sleep(spec["duration_s"])
    stats.measuring = False
    elapsed = time.perf_counter() - start
    stats.stopping = True
    await asyncio.wait([c.closed for c in conns], timeout=10)
    latencies = sorted(stats.latencies_ns)
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    return {
        "requests": stats.ok,
        "errors": stats.errors,
        "duration_s": elapsed,
        "p50_ms": None if p50 is None else p50 / 1e6,
        "p99_ms": None if p99 is None else p99 / 1e6,
    }


def run_pyload(
    load: HttpLoad,
    base_url: str,
    *,
    duration_s: float,
    concurrency: int,
    warmup_s: float = 0.0,
    expect: int = 200,
) -> LoadResult:
    """Measure ``load`` with our own generator, in a child process."""
    spec = {
        "method": load.method,
        "path": load.path,
        "headers": load.headers,
        "body": load.body,
        "accounts": (
            {"stem": load.accounts.stem, "count": load.accounts.count} if load.accounts else None
        ),
        "base_url": base_url,
        "concurrency": concurrency,
        "duration_s": duration_s,
        "warmup_s": warmup_s,
        "expect": expect,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "quotagate.bench.pyload"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=duration_s + warmup_s + 60,
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"load generator failed: {tail[0]}")
    data = json.loads(proc.stdout)
    return LoadResult(generator="pyload", **data)


def _main() -> None:
    spec = json.loads(sys.stdin.read())
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        runner = asyncio.run
    print(json.dumps(runner(generate(spec))))


if __name__ == "__main__":
    _main()
