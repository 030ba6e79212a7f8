"""The one database URL of the settings, spelled for each consumer, and never printed whole."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from quotagate.errors import ConfigError
from quotagate.settings import redact

_SCHEMES = ("postgresql", "postgres", "postgresql+asyncpg")


def _check(url: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme not in _SCHEMES:
        raise ConfigError(f"{redact(url)!r} is not a postgresql:// URL")
    return scheme


def asyncpg_dsn(url: str) -> str:
    """``postgresql://...`` for asyncpg (which knows no ``+driver`` suffix)."""
    _check(url)
    return urlunsplit(urlsplit(url)._replace(scheme="postgresql"))


def sqlalchemy_url(url: str) -> str:
    """``postgresql+asyncpg://...`` for SQLAlchemy's async engine (Alembic)."""
    _check(url)
    return urlunsplit(urlsplit(url)._replace(scheme="postgresql+asyncpg"))
