"""Entry point of the `quotagate` command.

Commands live in the modules of this package, one concern each; a module takes part by
defining ``register(cli)``. Every command then goes through quotagate.cli.preflight (find
the stack, check the backends it needs and the partition layout, say where it points), and
every failure through quotagate.cli.failures (one sentence on stderr, a documented status).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import click

from quotagate import __version__
from quotagate.cli.failures import EXIT_CODES_HELP, render
from quotagate.cli.preflight import guard


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EXIT_CODES_HELP,
)
@click.version_option(__version__, prog_name="quotagate")
def cli() -> None:
    """quotagate: a Redis-backed credit and quota gateway.

    Connections come from QUOTAGATE_REDIS_URL, QUOTAGATE_QUEUE_URL, QUOTAGATE_DATABASE_URL,
    the config file from QUOTAGATE_CONFIG. When none of the three URLs is set, a running
    `quotagate up` is found by its stack file (`quotagate env` prints its settings);
    otherwise the default local ports are used, and every command says so.
    """


def _register_commands() -> None:
    import quotagate.cli as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name == "main":
            continue
        module = importlib.import_module(f"quotagate.cli.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(cli)
    _guard_all(cli, "")


def _guard_all(group: click.Group, prefix: str) -> None:
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            _guard_all(command, f"{path} ")
        elif command.callback is not None:
            command.callback = guard(path, command.callback)


_register_commands()


def main() -> None:
    try:
        code = cli.main(prog_name="quotagate", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (Exception, KeyboardInterrupt) as exc:
        rendered = render(exc)
        if rendered is None:
            raise
        line, status = rendered
        click.echo(f"error: {line}", err=True)
        sys.exit(status)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
