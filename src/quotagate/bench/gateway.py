"""The gateway on the stage: its database migrated, a hook and a service key, served on loopback.

It is served by the same uvicorn settings as the other apps of the run (see
:class:`~quotagate.bench.servers.ServeOptions`), from the gateway's own app factory.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from quotagate.bench.servers import ServeOptions, Server, serving
from quotagate.bench.stage import Stage

APP = "quotagate.api.app:create_app"


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


async def prepare(stage: Stage) -> Keys:
    """Migrate the stage's database and make the keys the load presents."""
    from quotagate.auth import KeyStore

    quotagate_cli(stage, "migrate")
    store = KeyStore(stage.database_url)
    try:
        _, hook = await store.create("bench-hook", ["hook"])
        _, service = await store.create("bench-service", ["service"])
    finally:
        await store.aclose()
    return Keys(hook=hook, service=service)


@contextlib.contextmanager
def serving_gateway(stage: Stage, options: ServeOptions) -> Iterator[Server]:
    with serving(APP, options, stage.env) as server:
        yield server
