"""Entry point of the `quotagate` command.

Commands live in the modules of this package, one concern each; a module takes part by
defining ``register(cli)``. Errors quotagate raises on purpose print as one sentence on
stderr (no traceback) and exit with status 2 (bad input or config) or 3 (a backend is down).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import click

from quotagate import __version__
from quotagate.errors import BackendError, QuotagateError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="quotagate")
def cli() -> None:
    """quotagate: a Redis-backed credit and quota gateway.

    Connections come from QUOTAGATE_REDIS_URL, QUOTAGATE_QUEUE_URL, QUOTAGATE_DATABASE_URL
    and the config file from QUOTAGATE_CONFIG (see the README).
    """


def _register_commands() -> None:
    import quotagate.cli as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name in ("main", "output"):
            continue
        module = importlib.import_module(f"quotagate.cli.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(cli)


_register_commands()


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except QuotagateError as exc:
        click.echo(f"error: {exc.detail}", err=True)
        sys.exit(3 if isinstance(exc, BackendError) else 2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
