"""One flush batch, from the XRANGE reply straight to the COPY data PostgreSQL reads.

Most entries are transactions in the exact field layout the Lua scripts write. For those no
dict and no record is made: the values, the bytes Redis sent, are joined into one line of
COPY data for ``credit_transactions`` (PostgreSQL converts and checks them; a value it refuses
sends the batch down the checked path, see ``quotagate.ledger.flush``), and only what the
snapshots need is read in Python (amount, monthly change, time), summed per account as the
batch is built. Every other entry (account events, a transaction in another layout, one that
does not parse) goes through :func:`quotagate.ledger.outbox.parse_entry`, so an unreadable
entry raises OutboxEntryInvalid before anything is written (the flush then takes the checked
path, which quarantines it). So do the transactions that touch explicit grants (their ``gr``
and ``gd`` fields are another layout): their grant effects are applied from the parsed
entries (``quotagate.ledger.grants``).

The COPY data is CSV with control characters for separator (US, 0x1f) and quote (SOH, 0x01),
so that backslashes and quotes, which JSON metadata is full of, need no escaping; a value that
holds a newline or one of those two characters (found by one scan of the whole batch) is
quoted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from quotagate.errors import OutboxEntryInvalid
from quotagate.ledger.members import is_member_of_bytes
from quotagate.ledger.models import TRANSACTION_TYPES
from quotagate.ledger.outbox import (
    AccountEvent,
    RawEntry,
    TransactionEntry,
    decode_raw,
    parse_entry,
)

COPY_COLUMNS = (
    "id", "account_id", "amount", "type", "resource", "units", "description", "metadata",
    "created_at", "balance_after", "idempotency_key", "refund_of", "grant_id", "grant_draws",
    "member_id",
)  # fmt: skip
"""The ``credit_transactions`` columns of each COPY line, in order. The COPY reads an empty
value as NULL, as ``parse_entry`` reads an empty field as None."""

COPY_OPTIONS = {"format": "csv", "delimiter": "\x1f", "quote": "\x01", "null": ""}
"""How the COPY reads the lines (``asyncpg.Connection.copy_to_table`` keywords)."""
_SEP, _QUOTE = b"\x1f", b"\x01"

_FIELDS = ("id", "a", "amt", "t", "res", "u", "d", "md", "ts", "bal", "dm", "ik", "rf", "pm")
"""A transaction's stream fields the COPY line is made of, in the order the scripts write them
(an entry leaves out those that are empty; ``ts`` only in entries of earlier versions)."""
_WANTED = tuple(name.encode() for name in _FIELDS)
_REQUIRED = frozenset((b"id", b"a", b"amt", b"t", b"bal"))
_OPTIONAL = frozenset(_WANTED) - _REQUIRED | {b"hold"}  # a capture names its hold: not kept
_ABSENT = -1

Positions = tuple[int, ...]
"""For each of ``_FIELDS``, the index of its value in an entry's field list, or _ABSENT."""
_LAYOUTS: dict[tuple[bytes, ...], Positions | None] = {}
"""Positions by the field names of an entry; None for a layout the fast path does not read.
A handful of layouts exist (which optional fields are there), so this stays small."""


def _positions(layout: tuple[bytes, ...]) -> Positions | None:
    """Where a transaction layout holds each wanted value; None unless every required field is
    there, once, and no other field is."""
    names = set(layout)
    if len(names) != len(layout) or not names >= _REQUIRED or not names <= _REQUIRED | _OPTIONAL:
        return None
    index = {name: 2 * i + 1 for i, name in enumerate(layout)}
    return tuple(index.get(name, _ABSENT) for name in _WANTED)


def _layout_positions(fields: list[bytes]) -> Positions | None:
    layout = tuple(fields[0::2])
    try:
        return _LAYOUTS[layout]
    except KeyError:
        if len(_LAYOUTS) > 1000:  # only a stream of odd entries gets here: stay bounded
            _LAYOUTS.clear()
        positions = _LAYOUTS[layout] = _positions(layout)
        return positions


_TYPES = frozenset(kind.encode() for kind in TRANSACTION_TYPES)
_SPEND, _GRANT, _EXPIRE = b"spend", b"grant", b"expire"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Row = tuple[bytes, ...]
"""One transaction's values, in ``COPY_COLUMNS`` order."""


@dataclass(slots=True)
class Effect:
    """What a batch's transactions of one account add to its snapshot."""

    credits: int
    monthly: int
    last_id: bytes
    first_ms: int
    reset_ms: int | None
    """Time of the newest renewal grant or expiry (the account's last reset), if any."""

    def copy(self) -> Effect:
        return Effect(self.credits, self.monthly, self.last_id, self.first_ms, self.reset_ms)

    def add(self, other: Effect) -> None:
        self.credits += other.credits
        self.monthly += other.monthly
        self.last_id = max(self.last_id, other.last_id)
        self.first_ms = min(self.first_ms, other.first_ms)
        if other.reset_ms is not None:
            self.reset_ms = max(self.reset_ms or other.reset_ms, other.reset_ms)


@dataclass(slots=True)
class FlushBatch:
    """The entries of one batch, ready for :func:`quotagate.ledger.apply.apply_rows`."""

    raw: Sequence[RawEntry]
    """As read (the checked path parses these again)."""
    last_stream_id: str = ""
    lines: list[bytes] = field(default_factory=list)
    """One COPY line per transaction: the first copy of each id, in stream order."""
    sources: list[int] = field(default_factory=list)
    """For each line, the index of its entry in ``raw``."""
    effects: dict[bytes, Effect] = field(default_factory=dict)
    """Per account, the summed effect of its lines, except those in ``maybe_present``."""
    maybe_present: dict[int, tuple[bytes, bytes, Effect]] = field(default_factory=dict)
    """By line index: transactions a write-through may have put in the ledger already (all
    but spends, which nothing writes through), with their id, account and effect. The flush
    looks these up before the COPY and leaves out those it finds."""
    grant_entries: dict[int, TransactionEntry] = field(default_factory=dict)
    """By line index: the transactions that create, draw on, expire or void explicit grants
    (their effects on ``credit_grants`` follow the rows the COPY writes)."""
    events: list[AccountEvent] = field(default_factory=list)
    """The newest account event of each account in the batch."""
    readable: bool = True
    """False: an entry does not parse, and the batch goes straight to the checked path."""
    _all_data: bytes | None = None

    @property
    def transactions(self) -> int:
        return len(self.lines)

    def copy_data(self, skip: set[int]) -> tuple[bytes, int]:
        """The COPY data of the lines not in ``skip``, and their count."""
        if not skip and self._all_data is not None:
            return self._all_data, len(self.lines)
        lines = self.lines
        if skip:
            lines = [line for i, line in enumerate(lines) if i not in skip]
        data = b"\n".join(lines) + b"\n"
        if not _plain(data, len(lines)):
            sources = [j for i, j in enumerate(self.sources) if i not in skip]
            lines = [line if _plain(line, 0) else _quoted_line(self.raw[j])
                     for line, j in zip(lines, sources, strict=True)]  # fmt: skip
            data = b"\n".join(lines) + b"\n"
        if not skip:
            self._all_data = data
        return data, len(lines)

    def snapshot_effects(self, skip: set[int]) -> dict[bytes, Effect]:
        """Per account, the effect of the lines not in ``skip``."""
        effects = {account: effect.copy() for account, effect in self.effects.items()}
        for i, (_, account, effect) in self.maybe_present.items():
            if i in skip:
                continue
            if account in effects:
                effects[account].add(effect)
            else:
                effects[account] = effect.copy()
        return effects

    def grant_changes(self, skip: set[int]) -> list[TransactionEntry]:
        """The grant-touching transactions of the lines not in ``skip``."""
        return [entry for i, entry in self.grant_entries.items() if i not in skip]


def build_batch(raw: Sequence[RawEntry]) -> FlushBatch:
    """A batch of stream entries (at least one). Raises OutboxEntryInvalid."""
    batch = FlushBatch(raw, raw[-1][0].decode())
    lines, sources, effects = batch.lines, batch.sources, batch.effects
    seen: set[bytes] = set()
    stamps: dict[bytes, bytes] = {}
    events: dict[str, AccountEvent] = {}
    for j, (stream_id, fields) in enumerate(raw):
        positions = _layout_positions(fields)
        if positions is not None:
            txn_id, account, amt, kind, res, units, desc, meta, ts, bal, dm, ikey, refund_of, pm = [
                fields[i] if i != _ABSENT else b"" for i in positions
            ]
            ts = ts or stream_id.partition(b"-")[0]  # the entry's time is its id's
            if txn_id in seen:
                continue
            # A pool's spend names its member; anything else in ``pm`` is for parse_entry to
            # refuse (the checked path then books the spend without it and quarantines it).
            member_ok = not pm or (kind == _SPEND and is_member_of_bytes(pm, account))
            if txn_id and account and kind in _TYPES and member_ok:
                try:
                    amount, monthly, ms = int(amt), int(dm or 0), int(ts)
                    created = stamps.get(ts) or stamps.setdefault(ts, _stamp(ms))
                except (ValueError, OverflowError):
                    pass  # parse_entry below says what is wrong
                else:
                    seen.add(txn_id)
                    if kind != _SPEND:
                        resets = kind == _EXPIRE or (kind == _GRANT and monthly > 0)
                        effect = Effect(amount, monthly, txn_id, ms, ms if resets else None)
                        batch.maybe_present[len(lines)] = (txn_id, account, effect)
                    elif (acc := effects.get(account)) is None:
                        effects[account] = Effect(amount, monthly, txn_id, ms, None)
                    else:  # Effect.add, inline: this runs for nearly every entry
                        acc.credits += amount
                        acc.monthly += monthly
                        if txn_id > acc.last_id:
                            acc.last_id = txn_id
                        if ms < acc.first_ms:
                            acc.first_ms = ms
                    units = units if res else b""
                    row = (txn_id, account, amt, kind, res, units, desc, meta, created, bal, ikey,
                           refund_of, b"", b"", pm)  # fmt: skip
                    lines.append(_SEP.join(row))
                    sources.append(j)
                    continue
        entry = parse_entry(*decode_raw([stream_id, fields]))
        if isinstance(entry, AccountEvent):
            events[entry.account_id] = entry.after(events.get(entry.account_id))  # stream order
        elif (txn := entry.id.encode()) not in seen:
            seen.add(txn)
            batch.maybe_present[len(lines)] = (txn, entry.account_id.encode(), _effect(entry))
            if entry.touches_grants:
                batch.grant_entries[len(lines)] = entry
            lines.append(_SEP.join(_row(entry)))
            sources.append(j)
    batch.events = list(events.values())
    return batch


def _stamp(ms: int) -> bytes:
    """Milliseconds since the epoch as timestamptz text."""
    text = (_EPOCH + timedelta(milliseconds=ms)).isoformat(sep=" ", timespec="milliseconds")
    return text.encode()


def _row(e: TransactionEntry) -> Row:
    """A parsed transaction as the values of its COPY line."""
    try:
        created = _stamp(e.created_ms)
    except OverflowError:
        raise OutboxEntryInvalid(f"outbox entry {e.stream_id}: time out of range") from None
    units = "" if e.units is None else str(e.units)
    text = (
        e.id, e.account_id, str(e.amount), e.type, e.resource or "", units, e.description or "",
        e.metadata or "",
    )  # fmt: skip
    return (*[v.encode() for v in text], created, str(e.balance_after).encode(),
            (e.idempotency_key or "").encode(), (e.refund_of or "").encode(),
            (e.grant_id or "").encode(), (grant_draws_json(e) or "").encode(),
            (e.member_id or "").encode())  # fmt: skip


def grant_draws_json(e: TransactionEntry) -> str | None:
    """The ``grant_draws`` column of a transaction: JSON, grant id to credits (None: none)."""
    if not e.grant_draws:
        return None
    return json.dumps(dict(e.grant_draws), separators=(",", ":"))


def _effect(e: TransactionEntry) -> Effect:
    reset_ms = e.created_ms if e.resets_monthly else None
    return Effect(e.amount, e.monthly_delta, e.id.encode(), e.created_ms, reset_ms)


def _plain(data: bytes, lines: int) -> bool:
    """True when ``data`` (``lines`` lines; 0: one line without its newline) holds no value
    that needs quoting: then the only separators and newlines are the COPY's own."""
    return (
        data.count(_SEP) == (len(COPY_COLUMNS) - 1) * max(lines, 1)
        and data.count(b"\n") == lines
        and _QUOTE not in data
        and b"\r" not in data
    )


def _quoted_line(entry: RawEntry) -> bytes:
    """The COPY line of a transaction whose values need quoting (a rare, slower path)."""
    parsed = parse_entry(*decode_raw(entry))
    assert isinstance(parsed, TransactionEntry), "every COPY line is a transaction's"
    row = _row(parsed)
    quoted = [_QUOTE + v.replace(_QUOTE, _QUOTE * 2) + _QUOTE if v else v for v in row]
    return _SEP.join(quoted)
