"""A real local HTTP receiver for webhook tests: records every request, answers 500 to the
first ``fail_first`` ones (or sleeps ``delay_seconds`` before answering)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    body: str
    headers: dict[str, str]
    answered: int


@dataclass
class Receiver:
    url: str
    fail_first: int = 0
    delay_seconds: float = 0.0
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def delivered(self) -> list[Received]:
        return [r for r in self.requests if r.answered == 204]


@contextmanager
def receiver(fail_first: int = 0, delay_seconds: float = 0.0) -> Iterator[Receiver]:
    state = Receiver("", fail_first, delay_seconds)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
            with state.lock:
                failing = len(state.requests) < state.fail_first
                status = 500 if failing else 204
                state.requests.append(Received(body, dict(self.headers.items()), status))
            if state.delay_seconds:
                time.sleep(state.delay_seconds)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks?token=not-in-logs"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
