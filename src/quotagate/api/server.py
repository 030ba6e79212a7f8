"""How quotagate serves an ASGI app: uvicorn with uvloop and quotagate's HTTP protocol.

``quotagate serve`` runs the gateway this way; the benchmark runs its other apps the same way
(``python -m quotagate.api.server module:factory --port N``), so that every row of a run goes
through the same server with the same settings.
"""

from __future__ import annotations

import argparse
from typing import Any

from quotagate.api.protocol import GatewayProtocol
from quotagate.logs import LOG_LEVELS, logging_config
from quotagate.settings import Settings


def uvicorn_settings() -> dict[str, Any]:
    """The uvicorn settings every quotagate server uses (not the address or the workers)."""
    return {
        "loop": "uvloop",
        "http": GatewayProtocol,
        "lifespan": "on",
        "access_log": False,
        "proxy_headers": False,
        "server_header": False,
    }


def run(app: str, *, host: str, port: int, workers: int, log_format: str, log_level: str) -> None:
    """Serve the app factory ``app`` (``module:function``) in the foreground, each process
    logging in ``log_format`` from ``log_level`` up (:mod:`quotagate.logs`)."""
    import uvicorn

    options = uvicorn_settings()
    # Applied by uvicorn in every worker process it starts.
    options["log_config"] = logging_config(log_format, log_level)
    uvicorn.run(app, factory=True, host=host, port=port, workers=workers, **options)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m quotagate.api.server", description=__doc__)
    parser.add_argument("app", help="ASGI app factory, module:function")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--log-level", choices=LOG_LEVELS, default=None)
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    log_format, log_level = settings.logging(settings.load_config())
    run(
        args.app, host=args.host, port=args.port, workers=args.workers,
        log_format=log_format, log_level=args.log_level or log_level,
    )  # fmt: skip


if __name__ == "__main__":
    main()
