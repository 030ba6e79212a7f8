"""Apply the packaged migrations, and tell whether a database is current.

The migrations ship inside the wheel (``quotagate/ledger/migrations``), so ``quotagate
migrate`` works from an installed package, with no alembic.ini: the URL comes from the
settings. The gateway and the worker call :func:`check_current` (through
``Ledger.ensure_current``) and refuse to start on a database that is behind.
"""

from __future__ import annotations

from functools import cache

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory

from quotagate.errors import ConfigError
from quotagate.ledger.urls import sqlalchemy_url

SCRIPT_LOCATION = "quotagate.ledger:migrations"


def alembic_config(database_url: str) -> AlembicConfig:
    """An Alembic config for the packaged migrations and this database."""
    config = AlembicConfig()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    # Alembic reads options through ConfigParser: a literal % (in a password) must be doubled.
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(database_url).replace("%", "%%"))
    return config


@cache
def head_revision() -> str:
    """The newest revision this version of quotagate ships."""
    script = ScriptDirectory.from_config(alembic_config("postgresql://localhost/unused"))
    heads = script.get_heads()
    assert len(heads) == 1, f"the packaged migrations must have one head, not {heads}"
    return heads[0]


def known_revisions() -> frozenset[str]:
    script = ScriptDirectory.from_config(alembic_config("postgresql://localhost/unused"))
    return frozenset(rev.revision for rev in script.walk_revisions())


def upgrade(database_url: str, revision: str = "head") -> None:
    """Apply the migrations up to ``revision`` (blocking; call it off the event loop)."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    """Undo migrations down to ``revision`` ("base" for an empty database)."""
    command.downgrade(alembic_config(database_url), revision)


def check_current(revision: str | None) -> None:
    """Raise ConfigError unless ``revision`` (what the database holds) is the head."""
    head = head_revision()
    if revision == head:
        return
    if revision is None:
        raise ConfigError("the ledger database has no schema yet: run `quotagate migrate`")
    if revision not in known_revisions():
        raise ConfigError(
            f"the ledger database is at revision {revision}, which this version of quotagate "
            f"does not know (newest here: {head}): upgrade quotagate"
        )
    raise ConfigError(
        f"the ledger database is at revision {revision} and this version needs {head}: "
        "run `quotagate migrate`"
    )
