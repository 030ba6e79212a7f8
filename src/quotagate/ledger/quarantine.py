"""Outbox entries PostgreSQL refuses, set aside so that one of them never stops a partition.

The gateway refuses text PostgreSQL cannot store, but an entry written by an older gateway or
by hand may still hold some (a NUL, bytes that are not UTF-8, metadata that is not JSON), or
not parse at all (a missing field, a number that is not one). When PostgreSQL refuses a flush
batch, the flush's checked path (:func:`apply_checked`) applies it entry by entry:

1. each entry is screened (:func:`screen`): the text fields that carry no money
   (description, metadata, idempotency key, resource) are dropped when PostgreSQL could not
   store them; an entry whose money fields do not parse cannot be booked at all;
2. the entries are applied in savepoints, split in halves while PostgreSQL refuses a part,
   so that only the entries it refuses alone are left; each of those is tried once more
   without its text fields, then given up;
3. every entry that lost something goes to ``ledger_quarantine`` in the same transaction:
   the raw entry (bytes, as Redis sent it, see :func:`encode_raw`), the error, and whether
   its money was booked. Then the batch is trimmed from the stream as usual.

Each quarantined entry is also logged (event ``ledger_quarantine``, level ERROR: the alert)
and counted in ``quotagate_ledger_quarantined_total``, once its transaction committed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import asyncpg.exceptions._base as asyncpg_base

from quotagate import metrics
from quotagate.engine import validate
from quotagate.errors import OutboxEntryInvalid, ValidationError
from quotagate.ledger.apply import Applied, Staging, apply_entries
from quotagate.ledger.outbox import (
    AccountEvent,
    Entry,
    RawEntry,
    parse_entry,
)
from quotagate.ledger.postgres import describe, in_transaction

log = logging.getLogger(__name__)

REFUSED_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.DataError,
    asyncpg_base.DataError,  # asyncpg's own check of a value, before it is sent
)
"""What PostgreSQL (or asyncpg for it) answers to a value it will not store: a fault of the
data, not of the server, so retrying the same data can never succeed."""

MONEYLESS_FIELDS = ("d", "md", "ik", "res", "u", "pm")
"""Stream fields a transaction can lose and still be booked: description, metadata,
idempotency key, resource, units, and the member a pool's spend paid for (the pool paid it
all the same: its balance counts the spend). Nothing in them counts money."""

QUARANTINE_SQL = """
INSERT INTO ledger_quarantine
    (partition, stream_id, transaction_id, account_id, raw_entry, error)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (partition, stream_id) DO NOTHING
RETURNING id
"""
"""A batch read again after a crash between commit and trim finds its entries there already."""

MEMBER_FIELDS = ("pm",)
"""Dropped alone first when an entry does not parse: a pool's spend naming a member that is not
the pool's keeps its resource and units."""

COUNT_SQL = "SELECT count(*) FROM ledger_quarantine"


@dataclass(frozen=True, slots=True)
class Quarantined:
    """One entry set aside: as read, what the ledger booked of it (None: nothing), and why."""

    partition: int
    raw: RawEntry
    booked: Entry | None
    error: str

    @property
    def stream_id(self) -> str:
        return _stream_id(self.raw)


@dataclass(frozen=True, slots=True)
class CheckedResult:
    applied: Applied
    quarantined: list[Quarantined]
    """Entries newly put in the quarantine by this batch (not those a re-run found there)."""


def _stream_id(raw: RawEntry) -> str:
    return bytes(raw[0]).decode(errors="replace")  # Redis makes them: digits and a dash


# -- screening ----------------------------------------------------------------------------


def screen(raw: RawEntry) -> tuple[Entry | None, str | None]:
    """The entry as the ledger can store it (None: it cannot be booked), and what had to be
    dropped or why it cannot be booked (None: it is fine as it is)."""
    values = raw[1]
    fields: dict[str, str] = {}
    problems: list[str] = []
    for name_bytes, value_bytes in zip(values[0::2], values[1::2], strict=False):
        name = bytes(name_bytes).decode(errors="replace")
        text, problem = _field_text(name, bytes(value_bytes))
        if problem is None:
            fields[name] = text
        elif name in MONEYLESS_FIELDS:
            problems.append(f"{name} dropped: {problem}")
        else:
            return None, f"field {name!r} {problem}"
    try:
        entry = parse_entry(_stream_id(raw), fields)
    except OutboxEntryInvalid as exc:
        # Perhaps only a field without money in it is wrong (units that are not a number, a
        # member that is not the pool's): the member alone first, else all of them.
        for dropped in (MEMBER_FIELDS, MONEYLESS_FIELDS):
            kept = {k: v for k, v in fields.items() if k not in dropped}
            try:
                entry = parse_entry(_stream_id(raw), kept)
            except OutboxEntryInvalid:
                continue
            lost = sorted(name for name in fields.keys() - kept.keys() if fields[name])
            problems.append(f"{', '.join(lost)} dropped: {exc}")
            break
        else:
            return None, str(exc)
    return entry, "; ".join(problems) or None


def _field_text(name: str, value: bytes) -> tuple[str, str | None]:
    """A field's value as text, or why PostgreSQL could not store it."""
    try:
        text = value.decode()
    except UnicodeDecodeError:
        return "", "is not UTF-8 text"
    problem = validate.unstorable(text)
    if problem is None and name == "md" and text:
        problem = _metadata_problem(text)
    return text, problem


def _metadata_problem(text: str) -> str | None:
    try:
        validate.metadata(json.loads(text))
    except (ValueError, RecursionError):
        return "is not a JSON object"
    except ValidationError as exc:
        return exc.detail
    return None


def without_text(entry: Entry) -> Entry:
    """A transaction without the fields that count no money (an account event as it is)."""
    if isinstance(entry, AccountEvent):
        return entry
    return dataclasses.replace(
        entry, description=None, metadata=None, idempotency_key=None, resource=None, units=None
    )


# -- applying -----------------------------------------------------------------------------


async def apply_checked(
    conn: asyncpg.Connection, raw: Sequence[RawEntry], *, partition: int, default_tier: str
) -> CheckedResult:
    """Apply a batch PostgreSQL refused as a whole, entry by entry where it must, inside the
    caller's transaction; quarantine what it cannot store as it is."""
    bookable: list[Entry] = []
    set_aside: dict[str, tuple[Entry | None, str]] = {}  # by stream id, unique in a stream
    for item in raw:
        entry, problem = screen(item)
        if entry is not None:
            bookable.append(entry)
        if problem is not None:
            set_aside[_stream_id(item)] = (entry, problem)
    refused: list[tuple[Entry, str]] = []
    applied = await _apply_splitting(conn, bookable, default_tier, refused, whole=True)
    for entry, error in refused:
        booked, applied_alone = await _apply_without_text(conn, entry, default_tier)
        applied = _sum(applied, applied_alone)
        earlier = set_aside.get(entry.stream_id)
        set_aside[entry.stream_id] = (booked, f"{earlier[1]}; {error}" if earlier else error)
    quarantined = []
    for item in raw:
        found = set_aside.pop(_stream_id(item), None)
        if found is not None:
            record = Quarantined(partition, item, found[0], found[1])
            if await _insert(conn, record):
                quarantined.append(record)
    return CheckedResult(applied, quarantined)


async def _apply_splitting(
    conn: asyncpg.Connection,
    entries: list[Entry],
    default_tier: str,
    refused: list[tuple[Entry, str]],
    *,
    whole: bool = False,
) -> Applied:
    """Apply ``entries`` in a savepoint; if PostgreSQL refuses them, each half the same way,
    down to the single entries it refuses (added to ``refused``).

    Only the ``whole`` batch may be staged by COPY: the staging table keeps its rows until
    the commit, so a part staged after another part succeeded would read that part again."""
    if not entries:
        return Applied(0, 0, 0)
    staging: Staging | None = None if whole else "unnest"
    try:
        async with conn.transaction():
            return await apply_entries(conn, entries, default_tier=default_tier, staging=staging)
    except REFUSED_ERRORS as exc:
        if len(entries) == 1:
            refused.append((entries[0], f"PostgreSQL refused it: {describe(exc)}"))
            return Applied(0, 0, 0)
    middle = len(entries) // 2
    first = await _apply_splitting(conn, entries[:middle], default_tier, refused)
    second = await _apply_splitting(conn, entries[middle:], default_tier, refused)
    return _sum(first, second)


async def _apply_without_text(
    conn: asyncpg.Connection, entry: Entry, default_tier: str
) -> tuple[Entry | None, Applied]:
    """The refused entry once more, without its text: what was booked, and the count."""
    stripped = without_text(entry)
    if stripped is entry:
        return None, Applied(0, 0, 0)
    try:
        async with conn.transaction():
            applied = await apply_entries(conn, [stripped], default_tier=default_tier)
    except REFUSED_ERRORS:
        return None, Applied(0, 0, 0)
    return stripped, applied


def _sum(a: Applied, b: Applied) -> Applied:
    return Applied(a.transactions + b.transactions, a.inserted + b.inserted, a.events + b.events)


async def _insert(conn: asyncpg.Connection, record: Quarantined) -> bool:
    booked = record.booked
    error = record.error if booked is not None else f"not booked: {record.error}"
    row = await conn.fetchrow(
        QUARANTINE_SQL,
        record.partition,
        record.stream_id,
        _printable(booked.id) if booked else None,
        _printable(booked.account_id) if booked else None,
        encode_raw(record.raw),
        _printable(error),
    )
    return row is not None


def _printable(text: str) -> str:
    """Text PostgreSQL stores: the error may quote the NUL that caused it."""
    return text.replace("\x00", "\\x00")


# -- after the commit ---------------------------------------------------------------------


def report(quarantined: Sequence[Quarantined]) -> None:
    """Log and count entries whose quarantine committed."""
    for record in quarantined:
        booked = record.booked is not None
        metrics.LEDGER_QUARANTINED.labels("true" if booked else "false").inc()
        metrics.LEDGER_FLUSH_ERRORS.labels("quarantined").inc()
        fields = {
            "event": "ledger_quarantine",
            "partition": record.partition,
            "stream_id": record.stream_id,
            "transaction_id": record.booked.id if record.booked else None,
            "account_id": record.booked.account_id if record.booked else None,
            "booked": booked,
            "error": record.error,
        }
        log.error(
            "ledger_quarantine partition=%d stream_id=%s booked=%s error=%s",
            record.partition, record.stream_id, booked, record.error, extra=fields,
        )  # fmt: skip


async def count(pool: asyncpg.Pool) -> int:
    """Entries in the quarantine. Raises BackendUnavailable."""

    async def read(conn: asyncpg.Connection) -> int:
        return int(await conn.fetchval(COUNT_SQL))

    return await in_transaction(pool, read, readonly=True)


# -- the raw entry ------------------------------------------------------------------------


def encode_raw(entry: RawEntry) -> bytes:
    """The entry as Redis sent it to the flush: a RESP array of bulk strings (stream id, then
    field, value, field, value...). Any bytes fit, and ``decode_raw_entry`` reads it back."""
    stream_id, values = entry
    parts = [bytes(stream_id), *(bytes(v) for v in values)]
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


def decode_raw_entry(data: bytes) -> RawEntry:
    """The inverse of :func:`encode_raw`: ``[stream id, [field, value, ...]]``."""
    header, _, rest = data.partition(b"\r\n")
    parts: list[bytes] = []
    for _ in range(int(header[1:])):
        size, _, rest = rest.partition(b"\r\n")
        length = int(size[1:])
        parts.append(rest[:length])
        rest = rest[length + 2 :]
    return [parts[0], parts[1:]]
