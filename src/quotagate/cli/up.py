"""`quotagate up`: a complete local stack in the foreground, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from types import FrameType

import click

from quotagate.cli.output import emit_json
from quotagate.embedded.datadir import default_data_dir
from quotagate.embedded.stack import LocalStack, StackInfo
from quotagate.errors import StackError, StackStopRequested
from quotagate.settings import Settings, redact

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_WATCH_INTERVAL_SECONDS = 0.25


def _request_stop(signum: int, frame: FrameType | None) -> None:
    raise StackStopRequested(signum)


@click.command("up")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, envvar="QUOTAGATE_PORT",
              help="Port of the gateway on 127.0.0.1 [QUOTAGATE_PORT, 8080].")  # fmt: skip
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="QUOTAGATE_DATA_DIR",
    help="Where the embedded Redis and PostgreSQL keep their data, and the logs "
    "[default: ~/.local/share/quotagate; /var/lib/quotagate for root].",
)
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (url, keys, URLs) as stdout's first line.")  # fmt: skip
@click.option("--cluster", "cluster_masters", type=click.IntRange(min=3), default=None,
              metavar="N", help="Embed a Redis Cluster of N masters (N >= 3) and a "
              "standalone Valkey for the queues, instead of one Valkey.")  # fmt: skip
def up(port: int, data_dir: Path | None, as_json: bool, cluster_masters: int | None) -> None:
    """Run gateway, worker and scheduler (and Redis and PostgreSQL when none is configured).

    Uses QUOTAGATE_REDIS_URL and QUOTAGATE_DATABASE_URL when set; otherwise starts embedded
    servers whose data survives restarts. Creates an admin, a service and a hook key for this
    run (revoked when it stops, or by the next start if it was killed) and writes
    <data-dir>/stack.json, which the other commands read when no URL is set. Ctrl-C or
    SIGTERM stops everything.
    """
    settings = Settings.from_env()
    stack = LocalStack(
        settings,
        port,
        data_dir or settings.data_dir or default_data_dir(),
        cluster_masters=cluster_masters or 0,
    )
    for signum in _STOP_SIGNALS:
        signal.signal(signum, _request_stop)
    failure: StackError | None = None
    try:
        info = stack.start()
        _announce(info, as_json)
        while True:
            time.sleep(_WATCH_INTERVAL_SECONDS)
            gone = stack.exited()
            if gone is not None:
                code = gone.proc.returncode
                raise StackError(f"the {gone.name} stopped on its own (status {code})")
    except StackStopRequested:
        pass
    except StackError as exc:
        failure = exc
    finally:
        # The stop is bounded by per-process timeouts: let it finish rather than be interrupted.
        for signum in _STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        if stack.started():
            print("quotagate up: stopping", file=sys.stderr, flush=True)
            stack.stop()
            print("quotagate up: stopped", file=sys.stderr, flush=True)
        stack.stop()
    if failure is not None:
        raise click.ClickException(failure.detail)


def _announce(info: StackInfo, as_json: bool) -> None:
    if as_json:
        emit_json(
            {
                "url": info.url,
                "admin_key": info.admin_key,
                "service_key": info.service_key,
                "hook_key": info.hook_key,
                "redis_url": info.redis_url,
                "database_url": info.database_url,
            }
        )
        sys.stdout.flush()
        return
    redis_note = "embedded" if "redis" in info.embedded else "from QUOTAGATE_REDIS_URL"
    pg_note = "embedded" if "postgres" in info.embedded else "from QUOTAGATE_DATABASE_URL"
    auth = f"-H 'Authorization: Bearer {info.admin_key}'"
    service = f"-H 'Authorization: Bearer {info.service_key}'"
    body = "-H 'Content-Type: application/json' -d"
    lines = [
        f"quotagate is running at {info.url}",
        "",
        f"  admin key    {info.admin_key}",
        f"  service key  {info.service_key}   (for your services: consume, holds, reads)",
        f"  hook key     {info.hook_key}   (for a reverse proxy, in X-Quotagate-Key)",
        f"  Redis        {redact(info.redis_url)}   ({redis_note})",
        f"  PostgreSQL   {redact(info.database_url)}   ({pg_note})",
    ]
    lines.append(f"  data, logs   {info.data_dir}")
    lines += [
        "",
        'Point a shell at this stack (the CLI finds it by itself): eval "$(quotagate env)"',
    ]
    lines += [
        "",
        "Try it:",
        f'  curl -s -X PUT {auth} {body} \'{{"tier": "free"}}\' {info.url}/v1/accounts/alice',
        f'  curl -s -X POST {service} {body} \'{{"resource": "api_call"}}\' '
        f"{info.url}/v1/accounts/alice/consume",
        f"  curl -s {auth} {info.url}/v1/accounts/alice",
        "",
        "Ctrl-C stops everything; the three keys above are revoked then.",
    ]
    click.echo("\n".join(lines))
    sys.stdout.flush()


def register(cli: click.Group) -> None:
    cli.add_command(up)
