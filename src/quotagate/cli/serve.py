"""`quotagate serve`: the HTTP gateway under uvicorn (see :mod:`quotagate.api.server`)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile

import click

from quotagate.config import Config
from quotagate.settings import Settings


async def _preflight(settings: Settings) -> Config:
    """Fail before uvicorn starts, in one sentence, on what would stop every worker: a bad
    config or a ledger schema behind the code (a Postgres that is down is not a failure)."""
    from quotagate.api.ledger_link import LedgerLink

    config = settings.load_config()
    link = LedgerLink(settings.database_url)
    try:
        await link.start()
    finally:
        await link.aclose()
    return config


@click.command()
@click.option("--host", default=None, help="Address to listen on [QUOTAGATE_HOST, 127.0.0.1].")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="Port [QUOTAGATE_PORT, 8080]."
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Gateway processes [QUOTAGATE_WORKERS, one per core].",
)
def serve(host: str | None, port: int | None, workers: int | None) -> None:
    """Run the HTTP gateway (API, reverse-proxy hook, metrics) in the foreground."""
    from quotagate.api import server
    from quotagate.metrics import MULTIPROC_ENV

    settings = Settings.from_env()
    log_format, log_level = settings.logging(asyncio.run(_preflight(settings)))
    host = host or settings.host
    port = port or settings.port
    workers = workers or settings.workers
    made_dir = None
    if workers > 1 and not os.environ.get(MULTIPROC_ENV):
        # Each worker keeps its metrics in files here; /metrics adds them up.
        made_dir = tempfile.mkdtemp(prefix="quotagate-metrics-")
        os.environ[MULTIPROC_ENV] = made_dir
    try:
        server.run(
            "quotagate.api.app:create_app", host=host, port=port, workers=workers,
            log_format=log_format, log_level=log_level,
        )  # fmt: skip
    finally:
        if made_dir is not None:
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(made_dir, ignore_errors=True)


def register(cli: click.Group) -> None:
    cli.add_command(serve)
