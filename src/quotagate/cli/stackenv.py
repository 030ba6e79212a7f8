"""`quotagate env`: the settings of the running `quotagate up`, as shell exports."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from quotagate.embedded.stackfile import read_record, stack_file
from quotagate.errors import ConfigError
from quotagate.settings import Settings, default_data_dir


@click.command("env")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="QUOTAGATE_DATA_DIR",
    help="The data directory of the `quotagate up` [QUOTAGATE_DATA_DIR, up's default].",
)
def env(data_dir: Path | None) -> None:
    """Print the exports that point a shell at the running `quotagate up`.

    `eval "$(quotagate env)"` sets QUOTAGATE_REDIS_URL, QUOTAGATE_QUEUE_URL,
    QUOTAGATE_DATABASE_URL, QUOTAGATE_KEY_PREFIX (and QUOTAGATE_CONFIG when the stack has
    one) for the CLI and for Python code, and QUOTAGATE_URL, QUOTAGATE_ADMIN_KEY,
    QUOTAGATE_SERVICE_KEY and QUOTAGATE_HOOK_KEY for calling the gateway. The values hold
    passwords and keys: print them only where you would type them.
    """
    path = stack_file(data_dir or Settings.from_env().data_dir or default_data_dir())
    record = read_record(path)
    if record is None:
        raise ConfigError(f"no `quotagate up` has written {path}: start one with `quotagate up`")
    if not record.running():
        raise ConfigError(
            f"{path} is left from a `quotagate up` (pid {record.pid}) that is not running: "
            "start it again with `quotagate up`"
        )
    exports = {
        **record.environment(),
        "QUOTAGATE_URL": record.url,
        "QUOTAGATE_ADMIN_KEY": record.admin_key,
        "QUOTAGATE_SERVICE_KEY": record.service_key,
        "QUOTAGATE_HOOK_KEY": record.hook_key,
    }
    click.echo(f"# the `quotagate up` of {path.parent} (pid {record.pid})")
    for name, value in exports.items():
        click.echo(f"export {name}={shlex.quote(value)}")


def register(cli: click.Group) -> None:
    cli.add_command(env)
