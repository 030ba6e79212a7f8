"""`quotagate keys create|list|revoke`: the gateway's API keys."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from quotagate.auth.cache import publish_snapshot
from quotagate.auth.keys import SCOPES, ApiKey
from quotagate.auth.store import KeyStore
from quotagate.cli.output import emit_json, table
from quotagate.errors import ValidationError
from quotagate.settings import Settings

T = TypeVar("T")


def _run(work: Callable[[KeyStore, Settings], Awaitable[T]]) -> T:
    settings = Settings.from_env()

    async def main() -> T:
        store = KeyStore(settings.database_url)
        try:
            return await work(store, settings)
        finally:
            await store.aclose()

    return asyncio.run(main())


async def _publish(store: KeyStore, settings: Settings) -> None:
    """Refresh the copy of the key hashes in Redis (what a gateway started while Postgres is
    down falls back to). Best effort: running gateways refresh it within seconds anyway."""
    from quotagate.engine.connection import redis_from_url

    redis = redis_from_url(str(settings.redis_url), socket_timeout=2, connect_timeout=2)
    with contextlib.suppress(Exception):
        await publish_snapshot(redis, settings.key_prefix, await store.active())
    await redis.aclose()


def _row(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "scopes": sorted(key.scopes),
        "created_at": key.created_at.isoformat() if key.created_at else None,
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
    }


@click.group()
def keys() -> None:
    """API keys: create (shown once), list, revoke. Stored hashed in Postgres."""


@keys.command()
@click.option("--name", required=True, help="What the key is for (shown in listings).")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(SCOPES),
    help="admin, service, read or hook; repeat for several.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
def create(name: str, scopes: tuple[str, ...], as_json: bool) -> None:
    """Create a key. Its text is printed once and never stored."""

    async def work(store: KeyStore, settings: Settings) -> tuple[ApiKey, str]:
        made = await store.create(name, list(scopes))
        await _publish(store, settings)
        return made

    key, text = _run(work)
    if as_json:
        emit_json({**_row(key), "key": text})
        return
    click.echo(f"created key {key.id} ({', '.join(sorted(key.scopes))}) named {key.name!r}")
    click.echo(text)
    click.echo("keep it now: it is stored hashed and cannot be shown again", err=True)


@keys.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="A JSON array on stdout.")
def list_keys(as_json: bool) -> None:
    """List keys (never their text), revoked ones included."""

    async def work(store: KeyStore, settings: Settings) -> list[ApiKey]:
        return await store.all()

    rows = [_row(k) for k in _run(work)]
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        row["scopes"] = ",".join(row["scopes"])
    click.echo(table(rows, ["id", "name", "scopes", "created_at", "revoked_at"]))


@keys.command()
@click.argument("key_id")
def revoke(key_id: str) -> None:
    """Revoke a key: every gateway refuses it within a few seconds."""

    async def work(store: KeyStore, settings: Settings) -> ApiKey | None:
        key = await store.revoke(key_id)
        if key is not None:
            await _publish(store, settings)
        return key

    key = _run(work)
    if key is None:
        raise ValidationError(f"no API key with id {key_id!r}")
    click.echo(f"revoked key {key.id} ({key.name})")


def register(cli: click.Group) -> None:
    cli.add_command(keys)
