"""The gateway on the stage: its database migrated, a hook and a service key, and
`quotagate serve` itself on a loopback port (the way it is deployed).

The other apps of a run are served by uvicorn with the settings `quotagate serve` uses (see
:class:`~quotagate.bench.servers.ServeOptions`), so that the HTTP server is the same for all.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from quotagate.bench.servers import ServeOptions, Server, free_port, server_process
from quotagate.bench.stage import Stage

NO_EARLY_FLUSH = "10000000"
"""QUOTAGATE_FLUSH_TRIGGER_ENTRIES for the run: no worker serves the run's queues, so the
gateway must not queue flushes (the outboxes are cleared between scenarios instead)."""


@dataclass(frozen=True, slots=True)
class Keys:
    hook: str
    service: str


def quotagate_cli(stage: Stage, *args: str) -> str:
    """Run a quotagate command against the stage; its stdout."""
    proc = subprocess.run(
        [sys.executable, "-m", "quotagate.cli.main", *args],
        env={**os.environ, **stage.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"quotagate {args[0]} failed: {last[0]}")
    return proc.stdout


def migrate(stage: Stage) -> None:
    """Bring the stage's database to the ledger's schema (once per run)."""
    if not stage.migrated:
        quotagate_cli(stage, "migrate")
        stage.migrated = True


def prepare(stage: Stage) -> Keys:
    """Migrate the stage's database and make the keys the load presents."""
    migrate(stage)

    def create(scope: str) -> str:
        out = quotagate_cli(
            stage, "keys", "create", "--name", f"bench-{scope}", "--scope", scope, "--json"
        )
        return str(json.loads(out)["key"])

    return Keys(hook=create("hook"), service=create("service"))


@contextlib.contextmanager
def serving_gateway(stage: Stage, options: ServeOptions) -> Iterator[Server]:
    """`quotagate serve` on a free loopback port, until the block ends."""
    port = free_port()
    args = [
        sys.executable, "-m", "quotagate.cli.main", "serve", "--host", "127.0.0.1",
        "--port", str(port), "--workers", str(options.workers),
    ]  # fmt: skip
    env = {**stage.env, "QUOTAGATE_FLUSH_TRIGGER_ENTRIES": NO_EARLY_FLUSH}
    with server_process(args, port, env) as server:
        yield server
