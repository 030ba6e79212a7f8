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
from quotagate.cli.backends import Backends, run
from quotagate.cli.output import emit_json, table
from quotagate.errors import ValidationError

T = TypeVar("T")


PUBLISH_TIMEOUT_SECONDS = 2.0
"""How long a command waits for Redis to take the key hashes' copy before going on without."""


def _run(work: Callable[[KeyStore, Backends], Awaitable[T]]) -> T:
    async def with_store(b: Backends) -> T:
        assert b.keys is not None
        return await work(b.keys, b)

    return run(with_store, ledger=None, keys=True)


async def _publish(store: KeyStore, b: Backends) -> None:
    """Refresh the copy of the key hashes in Redis (what a gateway started while Postgres is
    down falls back to). Best effort: running gateways refresh it within seconds anyway."""
    with contextlib.suppress(Exception):
        snapshot = publish_snapshot(b.engine.redis, b.settings.key_prefix, await store.active())
        await asyncio.wait_for(snapshot, PUBLISH_TIMEOUT_SECONDS)


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
    help="admin, service, read, hook or settle; repeat for several.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
def create(name: str, scopes: tuple[str, ...], as_json: bool) -> None:
    """Create a key. Its text is printed once and never stored."""

    async def work(store: KeyStore, b: Backends) -> tuple[ApiKey, str]:
        made = await store.create(name, list(scopes))
        await _publish(store, b)
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

    async def work(store: KeyStore, b: Backends) -> list[ApiKey]:
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

    async def work(store: KeyStore, b: Backends) -> ApiKey | None:
        key = await store.revoke(key_id)
        if key is not None:
            await _publish(store, b)
        return key

    key = _run(work)
    if key is None:
        raise ValidationError(f"no API key with id {key_id!r}")
    click.echo(f"revoked key {key.id} ({key.name})")


def register(cli: click.Group) -> None:
    cli.add_command(keys)
