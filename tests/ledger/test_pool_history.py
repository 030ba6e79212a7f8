"""A member's history and usage hold its own rows and its pool's spends that name it, from the
ledger and the outbox alike; a pool's usage splits by member (docs/pools.md)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from tests.ledger.pool_entries import PoolOutbox

from quotagate.engine import CreditEngine
from quotagate.errors import ValidationError
from quotagate.ledger import Ledger, flush_all
from quotagate.ledger.usage import UsageRange, UsageRow, account_usage

Acct = Callable[[str], str]


class Pool:
    """A pool with members alice and bob: some charges flushed, later ones pending."""

    def __init__(self, engine: CreditEngine, pool_id: str) -> None:
        self.out = PoolOutbox(engine)
        self.id, self.alice, self.bob = pool_id, f"{pool_id}~alice", f"{pool_id}~bob"
        self.flushed: dict[str, list[str]] = {}
        self.pending: dict[str, list[str]] = {}

    async def charge(self, into: dict[str, list[str]]) -> None:
        """Per member, the ids of its rows (own and paid by the pool), oldest first."""
        out, pool, alice, bob = self.out, self.id, self.alice, self.bob
        into[alice] = [await out.spend(pool, 3, member=alice), await out.spend(alice, 2)]
        into[bob] = [await out.spend(pool, 7, member=bob)]
        into[pool] = [await out.spend(pool, 1)]
        into[alice].append(await out.spend(pool, 3, member=alice))


@pytest.fixture
async def pool(lengine: CreditEngine, ledger: Ledger, acct: Acct) -> Pool:
    made = Pool(lengine, acct("pool"))
    await made.charge(made.flushed)
    await flush_all(lengine, ledger)
    await made.charge(made.pending)
    return made


async def all_pages(ledger: Ledger, engine: CreditEngine, account_id: str) -> list[str]:
    seen: list[str] = []
    before = None
    while True:
        page = await ledger.history(engine, account_id, limit=2, before=before)
        seen += [t.id for t in page.transactions]
        if page.next is None:
            return seen
        before = page.next


async def test_a_members_history_holds_its_rows_and_the_pools_rows_naming_it(
    lengine: CreditEngine, ledger: Ledger, pool: Pool
) -> None:
    page = await ledger.history(lengine, pool.alice, limit=50)
    newest_first = [*reversed(pool.pending[pool.alice]), *reversed(pool.flushed[pool.alice])]
    assert [t.id for t in page.transactions] == newest_first
    assert [t.pending for t in page.transactions] == [True] * 3 + [False] * 3
    assert [(t.account_id, t.member_id, t.amount) for t in page.transactions[:3]] == [
        (pool.id, pool.alice, -3), (pool.alice, None, -2), (pool.id, pool.alice, -3),
    ]  # fmt: skip
    assert [(t.account_id, t.member_id) for t in page.transactions[3:]] == [
        (pool.id, pool.alice), (pool.alice, None), (pool.id, pool.alice),
    ]  # fmt: skip
    assert await all_pages(ledger, lengine, pool.alice) == newest_first
    bob = [*reversed(pool.pending[pool.bob]), *reversed(pool.flushed[pool.bob])]
    assert await all_pages(ledger, lengine, pool.bob) == bob


async def test_a_pools_history_names_the_member_of_each_row(
    lengine: CreditEngine, ledger: Ledger, pool: Pool
) -> None:
    page = await ledger.history(lengine, pool.id, limit=50)
    members = {t.id: t.member_id for t in page.transactions}
    for charges in (pool.flushed, pool.pending):
        paid_for = {
            charges[pool.alice][0]: pool.alice, charges[pool.alice][2]: pool.alice,
            charges[pool.bob][0]: pool.bob, charges[pool.id][0]: None,
        }  # fmt: skip
        assert {i: members[i] for i in paid_for} == paid_for
    assert len(members) == 8  # the members' own rows are theirs alone


async def test_a_page_of_a_member_cannot_start_at_another_members_row(
    lengine: CreditEngine, ledger: Ledger, pool: Pool
) -> None:
    with pytest.raises(ValidationError, match="before"):
        await ledger.history(lengine, pool.alice, before=pool.flushed[pool.bob][0])
    with pytest.raises(ValidationError, match="pool's member"):
        await ledger.history(lengine, f"{pool.id}~al~ice")


def today() -> UsageRange:
    now = datetime.now(UTC)
    return UsageRange.parse((now - timedelta(days=1)).isoformat(), now.isoformat(), "day")


def totals(rows: list[UsageRow]) -> dict[str | None, tuple[int, int, int, int]]:
    """Per member (or per resource), the range's spent, units, transactions and pending."""
    out: dict[str | None, tuple[int, int, int, int]] = {}
    for r in rows:
        name = r.member_id if r.member_id or not r.resource else r.resource
        spent, units, count, pending = out.get(name, (0, 0, 0, 0))
        out[name] = (spent + r.spent, units + r.units, count + r.transactions,
                     pending + r.pending)  # fmt: skip
    return out


async def test_a_members_usage_counts_what_its_pool_paid_for_it(
    lengine: CreditEngine, ledger: Ledger, pool: Pool
) -> None:
    alice = await account_usage(lengine, ledger, pool.alice, today())
    assert {r.account_id for r in alice.rows} == {pool.alice}
    assert totals(alice.rows) == {"api_call": (2 * (3 + 2 + 3), 6, 6, 3)}
    assert alice.pending == 3
    bob = await account_usage(lengine, ledger, pool.bob, today())
    assert totals(bob.rows) == {"api_call": (14, 2, 2, 1)}


async def test_a_pools_usage_by_member_splits_what_it_paid(
    lengine: CreditEngine, ledger: Ledger, pool: Pool
) -> None:
    whole = await account_usage(lengine, ledger, pool.id, today())
    assert totals(whole.rows) == {"api_call": (2 * (3 + 7 + 1 + 3), 8, 8, 4)}

    by_member = await account_usage(lengine, ledger, pool.id, today(), group_by="member")
    assert by_member.group_by == "member"
    assert {(r.account_id, r.resource) for r in by_member.rows} == {(pool.id, None)}
    assert totals(by_member.rows) == {
        pool.alice: (12, 4, 4, 2), pool.bob: (14, 2, 2, 1), None: (2, 2, 2, 1),
    }  # fmt: skip
    with pytest.raises(ValidationError, match="group_by"):
        await account_usage(lengine, ledger, pool.alice, today(), group_by="member")
