"""The outbox streams as the ledger reads them: typed entries, batches, deletion, lag.

Each partition's stream (``engine.keys.outbox(p)``) holds, in the order Redis ran the scripts,
two kinds of entries (fields as the Lua scripts write them, ``lua/prelude.lua``):

    transaction    id a amt t [res u] [d] [md] bal [dm] [ik] [hold|rf]   t: earn|spend|refund|...
                   [gr [gx] gp gs]   on a grant that creates an explicit grant
                   [gr]              on an expire or adjust that expires or voids one
                   [gd]              on a spend that drew on explicit grants
                   [pm]              on a pool's spend: the member it paid for
    account event  id a t=account tier st od [rst] ca [rp] [pl] [pf]   tier, status, overdraft

(docs/grants.md describes the grant fields, docs/pools.md the member ones: ``pm`` must name a
member of the entry's account; ``pl``, the member limit, and ``pf``, own credits first, come
only on a member's events). A field in brackets is left out when it is
empty (``dm`` when 0; ``u`` goes with ``res``), and the time of an entry is its stream id's
milliseconds: Redis gives every entry its id from its own clock when the script appends it.
Entries written by earlier versions carry every field, empty or not, and their time in
``ts``; both read the same.

An entry that does not parse raises :class:`OutboxEntryInvalid`: the flush of that partition
stops there rather than guess (the entry stays in the stream for a person to look at).

The flush reads with :class:`StreamReader`, which keeps the reply as Redis sent it (bytes,
one list per entry): building a dict and a typed record for each of thousands of entries
cost more than the PostgreSQL work of the batch (see ``quotagate.ledger.batch``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

from redis.asyncio import Redis
from redis.client import NEVER_DECODE

from quotagate.engine import CreditEngine
from quotagate.engine.connection import is_cluster
from quotagate.engine.results import GRANT_SOURCES
from quotagate.errors import ConfigError, OutboxEntryInvalid
from quotagate.ledger import members
from quotagate.ledger.models import TRANSACTION_TYPES

_TYPES = frozenset(TRANSACTION_TYPES)
_GRANT_FIELDS = frozenset(("gr", "gx", "gp", "gs", "gd"))
_GRANT_ENDING_TYPES = frozenset(("expire", "adjust"))
_SOURCES = frozenset(GRANT_SOURCES)
MAX_CREDITS = 2**63 - 1
"""The largest amount a bigint column holds: a grant field past it cannot be booked."""
MAX_TIME_MS = 253402300799999
"""9999-12-31T23:59:59.999Z in ms: the last instant a timestamptz column takes as an expiry."""


@dataclass(frozen=True, slots=True)
class TransactionEntry:
    stream_id: str
    id: str
    account_id: str
    amount: int
    type: str
    resource: str | None
    units: int | None
    description: str | None
    metadata: str | None
    """JSON text, as the engine validated it."""
    idempotency_key: str | None
    balance_after: int
    created_ms: int
    monthly_delta: int
    """Signed change of the monthly bucket (renewal grants and expiries, spends from it)."""
    refund_of: str | None = None
    """For a refund: the transaction id of the spend it returns (the entry's ``rf``)."""
    grant_id: str | None = None
    """The explicit grant a grant creates, an expire expires or an adjust voids (``gr``)."""
    grant_expires_ms: int | None = None
    """A created grant's expiry (``gx``); None: it never expires."""
    grant_priority: int | None = None
    """A created grant's priority (``gp``)."""
    grant_source: str | None = None
    """A created grant's source (``gs``)."""
    grant_draws: tuple[tuple[str, int], ...] = ()
    """A spend's draws on explicit grants (``gd``): grant id and credits, in the entry's
    order."""
    member_id: str | None = None
    """On a pool's spend: the member whose charge the pool paid (``pm``)."""

    @property
    def resets_monthly(self) -> bool:
        """Written by a renewal or an opening grant: the account's last reset moves here. The
        expiry of an explicit grant is not a reset."""
        if self.type == "expire":
            return self.grant_id is None
        return self.type == "grant" and self.monthly_delta > 0

    @property
    def creates_grant(self) -> bool:
        return self.type == "grant" and self.grant_id is not None

    @property
    def touches_grants(self) -> bool:
        """It creates, draws on, expires or voids an explicit grant."""
        return self.grant_id is not None or bool(self.grant_draws)


@dataclass(frozen=True, slots=True)
class AccountEvent:
    stream_id: str
    id: str
    account_id: str
    tier: str
    status: str
    overdraft_limit: int
    last_reset_ms: int | None
    created_ms: int
    renewed_period: str | None = None
    """The period a renewal completed (its event carries it), else None."""
    member_limit: int | None = None
    """A member's limit (``pl``); None: no limit of its own, or no member."""
    own_credits_first: bool = False
    """A member whose own credits go before the pool's (``pf`` = 1)."""

    @property
    def position(self) -> str:
        return stream_position(self.stream_id)

    def after(self, earlier: AccountEvent | None) -> AccountEvent:
        """This event in place of an earlier one of the account (a batch keeps the newest of
        each account): its settings win, but a renewal the earlier one recorded is kept, since
        the account is still renewed for that period."""
        if earlier is None or not earlier.renewed_period:
            return self
        if self.renewed_period and self.renewed_period >= earlier.renewed_period:
            return self
        return replace(self, renewed_period=earlier.renewed_period)


Entry = TransactionEntry | AccountEvent


def stream_position(stream_id: str) -> str:
    """A stream id as text that sorts like the id ("<ms>-<seq>", both zero-padded)."""
    ms, _, seq = stream_id.partition("-")
    return f"{int(ms):015d}-{int(seq or 0):010d}"


def stream_ms(stream_id: str) -> int:
    """The millisecond part of a stream id: when Redis appended the entry."""
    return int(stream_id.partition("-")[0])


def parse_entry(stream_id: str, fields: dict[str, str]) -> Entry:
    """One stream entry as a typed record. Raises OutboxEntryInvalid."""
    try:
        if fields["t"] == "account":
            return _account_event(stream_id, fields)
        return _transaction(stream_id, fields)
    except (KeyError, ValueError) as exc:
        raise OutboxEntryInvalid(
            f"outbox entry {stream_id} cannot be read ({type(exc).__name__}: {exc})"
        ) from None


def _transaction(stream_id: str, f: dict[str, str]) -> TransactionEntry:
    # Positional arguments and few calls: this runs for every entry the flush reads.
    kind, txn_id, account_id = f["t"], f["id"], f["a"]
    if kind not in _TYPES:
        raise ValueError(f"unknown type {kind!r}")
    if not txn_id or not account_id:
        raise ValueError("empty id or account")
    resource = f.get("res") or None
    entry = TransactionEntry(
        stream_id,
        txn_id,
        account_id,
        int(f["amt"]),
        kind,
        resource,
        int(f["u"]) if resource else None,
        f.get("d") or None,
        f.get("md") or None,
        f.get("ik") or None,
        int(f["bal"]),
        int(f["ts"]) if "ts" in f else stream_ms(stream_id),
        int(f.get("dm") or 0),
        f.get("rf") or None,
    )
    if f.keys() & _GRANT_FIELDS:
        entry = _with_grant_fields(entry, f)
    if f.get("pm"):
        entry = _with_member(entry, f["pm"])
    return entry


def _with_member(entry: TransactionEntry, member_id: str) -> TransactionEntry:
    """The pool's spend with the member it paid for. Raises ValueError: ``pm`` on another
    type, or naming an account that is no member of the entry's."""
    if entry.type != "spend":
        raise ValueError(f"pm on a {entry.type} transaction")
    if not members.is_member_of(member_id, entry.account_id):
        raise ValueError(f"pm {member_id!r} is no member of {entry.account_id!r}")
    return replace(entry, member_id=member_id)


def _with_grant_fields(entry: TransactionEntry, f: dict[str, str]) -> TransactionEntry:
    """The entry with its grant fields, checked against its type. Raises ValueError."""
    grant_id = f.get("gr") or None
    creation = {name for name in ("gx", "gp", "gs") if f.get(name)}
    if grant_id is None and creation:
        raise ValueError(f"{', '.join(sorted(creation))} without gr")
    if grant_id is not None:
        if entry.type == "grant":
            return _grant_creation(entry, grant_id, f)
        if entry.type not in _GRANT_ENDING_TYPES:
            raise ValueError(f"gr on a {entry.type} transaction")
        if creation:
            raise ValueError(f"{', '.join(sorted(creation))} on a {entry.type} transaction")
        if entry.amount > 0:
            raise ValueError(f"a grant's {entry.type} of a positive amount")
        if f.get("gd"):
            raise ValueError(f"gd on a {entry.type} transaction")
        return replace(entry, grant_id=grant_id)
    if not f.get("gd"):
        return entry
    if entry.type != "spend":
        raise ValueError(f"gd on a {entry.type} transaction")
    return replace(entry, grant_draws=parse_grant_draws(f["gd"], entry.amount))


def _grant_creation(entry: TransactionEntry, grant_id: str, f: dict[str, str]) -> TransactionEntry:
    if f.get("gd"):
        raise ValueError("gd on a grant transaction")
    if not 0 < entry.amount <= MAX_CREDITS:
        raise ValueError(f"a grant of {entry.amount} credits")
    source = f["gs"]
    if source not in _SOURCES:
        raise ValueError(f"unknown grant source {source!r}")
    priority = int(f["gp"])
    if not 0 <= priority <= 100:
        raise ValueError(f"grant priority {priority} is not from 0 to 100")
    expires_ms = int(f.get("gx") or 0) or None  # 0 means never, as in the account's ``g``
    if expires_ms is not None and not 0 < expires_ms <= MAX_TIME_MS:
        raise ValueError(f"grant expiry {expires_ms} out of range")
    return replace(
        entry,
        grant_id=grant_id,
        grant_expires_ms=expires_ms,
        grant_priority=priority,
        grant_source=source,
    )


def parse_grant_draws(text: str, amount: int) -> tuple[tuple[str, int], ...]:
    """``<grant id>:<credits>,...`` as pairs. Raises ValueError: an empty id, credits that are
    not a positive number a bigint holds, a grant named twice, or draws past what the spend
    charged (``amount`` is the spend's, negative)."""
    draws: list[tuple[str, int]] = []
    for part in text.split(","):
        grant_id, sep, credits_text = part.rpartition(":")
        if not sep or not grant_id:
            raise ValueError(f"gd part {part!r} is not <grant id>:<credits>")
        credits = int(credits_text)
        if not 0 < credits <= MAX_CREDITS:
            raise ValueError(f"gd draws {credits} credits from grant {grant_id!r}")
        draws.append((grant_id, credits))
    if len({grant_id for grant_id, _ in draws}) != len(draws):
        raise ValueError("gd names a grant twice")
    if sum(credits for _, credits in draws) > -amount:
        raise ValueError(f"gd draws more than the spend's {-amount} credits")
    return tuple(draws)


def _account_event(stream_id: str, f: dict[str, str]) -> AccountEvent:
    account_id = _nonempty(f["a"])
    member_limit, own_credits_first = _member_settings(account_id, f)
    return AccountEvent(
        stream_id=stream_id,
        id=_nonempty(f["id"]),
        account_id=account_id,
        tier=_nonempty(f["tier"]),
        status=_nonempty(f["st"]),
        overdraft_limit=int(f["od"]),
        last_reset_ms=int(f["rst"]) if f.get("rst") else None,
        created_ms=int(f["ca"]),
        renewed_period=f.get("rp") or None,
        member_limit=member_limit,
        own_credits_first=own_credits_first,
    )


def _member_settings(account_id: str, f: dict[str, str]) -> tuple[int | None, bool]:
    """A member event's limit (None: none) and own-credits-first. Raises ValueError: a limit
    that is not a count of credits, ``pf`` other than 0 or 1, or either on an account that
    is no member."""
    limit_text, first_text = f.get("pl") or "", f.get("pf") or ""
    if not limit_text and not first_text:
        return None, False
    if members.pool_of(account_id) is None:
        raise ValueError(f"pl or pf on {account_id!r}, which is no pool's member")
    limit = int(limit_text) if limit_text else None
    if limit is not None and not 0 <= limit <= MAX_CREDITS:
        raise ValueError(f"member limit {limit} out of range")
    if first_text not in ("", "0", "1"):
        raise ValueError(f"pf {first_text!r} is neither 0 nor 1")
    return limit, first_text == "1"


def _nonempty(value: str) -> str:
    if not value:
        raise ValueError("empty field")
    return value


RawEntries = list[tuple[str, dict[str, str]]]


def parse_entries(raw: RawEntries) -> list[Entry]:
    return [parse_entry(stream_id, fields) for stream_id, fields in raw]


async def read_batch(
    engine: CreditEngine, partition: int, count: int, *, after: str | None = None
) -> list[Entry]:
    """The oldest ``count`` entries of the partition's outbox (flushed ones are gone), or
    the ``count`` entries after stream id ``after``."""
    start = "-" if after is None else "(" + after
    raw = await engine.redis.xrange(engine.keys.outbox(partition), start, "+", count=count)
    return parse_entries(cast(RawEntries, raw))


READ_CHUNK = 2000
"""Entries per XRANGE. A flush batch may be larger; it is read in several commands, so Redis
never spends more than a millisecond or two serving one (the charges wait meanwhile)."""

RawEntry = list[Any]
"""``[stream id, [field, value, field, value, ...]]``, all bytes, as Redis replied."""


def _as_sent(response: Any, **options: Any) -> Any:
    return response


class StreamReader:
    """Range reads of the outboxes whose replies stay as Redis sent them (bytes, no dict per
    entry), on the engine's own connection pool."""

    def __init__(self, engine: CreditEngine) -> None:
        self._keys = engine.keys
        self._command = "XRANGE"
        if is_cluster(engine.redis):
            # A cluster client has no pool to share. It picks a reply's parser by the
            # command's name as sent: the same command, named in lower case, has none.
            self._redis = engine.redis
            self._command = "xrange"
            return
        # A client object of our own only for its reply parsing; connections are shared.
        self._redis = Redis(connection_pool=engine.redis.connection_pool)
        self._redis.set_response_callback("XRANGE", _as_sent)

    async def read(self, partition: int, count: int, *, after: str | None = None) -> list[RawEntry]:
        """The oldest ``count`` entries of the partition's outbox, or the ``count`` after
        stream id ``after``, in stream order."""
        key = self._keys.outbox(partition)
        start: str | bytes = "-" if after is None else "(" + after
        entries: list[RawEntry] = []
        while len(entries) < count:
            want = min(READ_CHUNK, count - len(entries))
            reply = await self._redis.execute_command(  # type: ignore[no-untyped-call]
                self._command, key, start, "+", "COUNT", want, **{NEVER_DECODE: True}
            )
            entries.extend(reply)
            if len(reply) < want:
                break
            start = b"(" + reply[-1][0]
        return entries


def parse_raw(raw: Sequence[RawEntry]) -> list[Entry]:
    """Entries read by :class:`StreamReader` as typed records. Raises OutboxEntryInvalid."""
    return [parse_entry(*decode_raw(entry)) for entry in raw]


def decode_raw(entry: RawEntry) -> tuple[str, dict[str, str]]:
    """A raw entry as stream id and field dict. Raises OutboxEntryInvalid (not UTF-8)."""
    stream_id, fields = entry
    try:
        pairs = zip(fields[0::2], fields[1::2], strict=False)
        return stream_id.decode(), {k.decode(): v.decode() for k, v in pairs}
    except UnicodeDecodeError as exc:
        raise OutboxEntryInvalid(f"outbox entry {stream_id!r} is not UTF-8 text ({exc})") from None


async def read_ids(engine: CreditEngine, partition: int, stream_ids: Sequence[str]) -> list[Entry]:
    """The given entries (those still in the stream), in stream order."""
    key = engine.keys.outbox(partition)
    async with engine.redis.pipeline(transaction=False) as pipe:
        for stream_id in stream_ids:
            pipe.xrange(key, stream_id, stream_id, count=1)
        replies = await pipe.execute()
    raw = [entry for reply in replies for entry in reply]
    raw.sort(key=lambda e: stream_position(e[0]))
    return parse_entries(raw)


async def read_all(
    engine: CreditEngine, partition: int, *, chunk: int = 5000, limit: int | None = None
) -> list[Entry]:
    """Every entry of the partition's outbox, oldest first (at most ``limit``)."""
    key = engine.keys.outbox(partition)
    entries: list[Entry] = []
    start = "-"
    while limit is None or len(entries) < limit:
        want = chunk if limit is None else min(chunk, limit - len(entries))
        raw = cast(RawEntries, await engine.redis.xrange(key, start, "+", count=want))
        entries.extend(parse_entries(raw))
        if len(raw) < want:
            break
        start = "(" + raw[-1][0]
    return entries


async def trim_through(engine: CreditEngine, partition: int, last_stream_id: str) -> int:
    """Remove every entry up to and including ``last_stream_id``: only ever after the
    PostgreSQL commit of a batch that ends there.

    A batch is read from the head of the stream (or right after the previous batch), so the
    entries up to its last id are exactly the batch and batches committed before it: one
    ``XTRIM MINID`` (exact) removes them, where XDEL would carry every id.
    """
    ms, _, seq = last_stream_id.partition("-")
    threshold = f"{ms}-{int(seq or 0) + 1}"
    return int(
        await engine.redis.xtrim(engine.keys.outbox(partition), minid=threshold, approximate=False)
    )


async def check_layout(engine: CreditEngine) -> None:
    """ConfigError unless Redis is laid out in as many partitions as the config says: a
    flush of the wrong count would never reach the outboxes past it."""
    recorded = await engine.redis.hget(engine.keys.meta, "partitions")
    if recorded is not None and int(recorded) != engine.config.partitions:
        raise ConfigError(
            f"config: partitions = {engine.config.partitions}, but this Redis holds data "
            f"laid out in {int(recorded)} partitions; use that number"
        )
