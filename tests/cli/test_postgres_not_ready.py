"""A PostgreSQL server that answers but cannot serve for now (starting up, shutting down, out
of connections) is treated like one that does not answer: commands that work without it go
on, and a worker waits for it instead of exiting.

The server here speaks just enough of PostgreSQL's protocol to refuse: it declines SSL and
answers every startup packet with the FATAL error a real server sends in that state, so the
test does not depend on catching a real server in the middle of a restart."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from tests.conftest import REDIS_URL
from tests.jobs.processes import QuotagateProcess, quotagate_env

from quotagate.cli import pgserver
from quotagate.settings import Settings

SSL_REQUEST = 80877103
STATES = {
    "57P03": "the database system is shutting down",
    "53300": "sorry, too many clients already",
}


def _error_response(sqlstate: str, message: str) -> bytes:
    fields = b"".join(
        tag + value.encode() + b"\0"
        for tag, value in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", sqlstate), (b"M", message))
    )
    body = fields + b"\0"
    return b"E" + struct.pack("!I", len(body) + 4) + body


def _serve_one(conn: socket.socket, refusal: bytes) -> None:
    # A client that gives up (a worker being stopped, a timeout) may reset the connection at
    # any point; that ends this conversation, not the test.
    with conn, contextlib.suppress(OSError):
        conn.settimeout(5)
        while True:
            header = conn.recv(8, socket.MSG_WAITALL)
            if len(header) < 8:
                return
            length, code = struct.unpack("!II", header)
            if length > 8:
                conn.recv(length - 8, socket.MSG_WAITALL)
            if code == SSL_REQUEST:
                conn.sendall(b"N")  # no SSL: the client goes on in the clear
                continue
            conn.sendall(refusal)
            return


@pytest.fixture(params=sorted(STATES))
def refusing_postgres(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a server that refuses every connection with one not-ready SQLSTATE."""
    sqlstate = request.param
    refusal = _error_response(sqlstate, STATES[sqlstate])
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=_serve_one, args=(conn, refusal), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/quotagate"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def _settings(url: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("QUOTAGATE_DATABASE_URL", url)
    return Settings.from_env()


def test_a_server_that_cannot_serve_yet_is_optional_like_one_that_is_down(
    refusing_postgres: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pgserver.check(_settings(refusing_postgres, monkeypatch), "optional")  # no raise


def test_a_command_that_needs_it_is_still_told(
    refusing_postgres: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(asyncpg.PostgresError) as caught:
        pgserver.check(_settings(refusing_postgres, monkeypatch), "required")
    assert caught.value.sqlstate in STATES


def test_a_worker_started_while_postgres_is_shutting_down_waits(
    refusing_postgres: str, key_prefix: str, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        "partitions = 2\n[resources]\nunit = 1\n[tiers.free]\ncredit_limit = 10\nmonthly_grant = 10\n"
    )
    env = quotagate_env(REDIS_URL, refusing_postgres, key_prefix, config)
    worker = QuotagateProcess(["worker"], env, tmp_path / "worker.log")
    try:
        deadline = time.monotonic() + 60  # a loaded machine starts Python slowly
        while "waiting for PostgreSQL" not in worker.output():
            assert worker.alive(), worker.output()
            assert time.monotonic() < deadline, worker.output()
            time.sleep(0.2)
        time.sleep(1.5)  # more attempts meanwhile: still alive, still one line
        assert worker.alive(), worker.output()
        assert worker.output().count("waiting for PostgreSQL") == 1, worker.output()
    finally:
        worker.stop()
