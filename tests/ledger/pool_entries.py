"""Outbox entries of a pool and its members, written as docs/pools.md gives the scripts: the
pool's part of a member's charge is a spend of the pool naming the member in ``pm``; a
member's account events carry ``pl`` (its limit) and ``pf`` (own credits first)."""

from __future__ import annotations

from redis.typing import EncodableT, FieldT

from quotagate import ids
from quotagate.engine import CreditEngine


class PoolOutbox:
    """Appends entries of accounts to their partitions' outboxes, tracking each balance."""

    def __init__(self, engine: CreditEngine) -> None:
        self.engine = engine
        self.balances: dict[str, int] = {}

    async def xadd(self, account_id: str, fields: dict[FieldT, EncodableT]) -> str:
        stream = self.engine.keys.outbox(self.engine.keys.partition_of(account_id))
        return str(await self.engine.redis.xadd(stream, fields))

    async def transaction(
        self, account_id: str, kind: str, amount: int, **extra: str
    ) -> tuple[str, str]:
        """One transaction: its id and its stream id."""
        balance = self.balances[account_id] = self.balances.get(account_id, 0) + amount
        txn_id = ids.new_id()
        fields: dict[FieldT, EncodableT] = {
            "id": txn_id, "a": account_id, "amt": str(amount), "t": kind, "bal": str(balance),
        }  # fmt: skip
        fields.update(extra)
        return txn_id, await self.xadd(account_id, fields)

    async def spend(
        self, account_id: str, credits: int, *, member: str | None = None, units: int = 1
    ) -> str:
        """A spend of ``credits`` for ``units`` api calls; ``member``: the pool paid it for
        that member. Its transaction id."""
        extra = {"res": "api_call", "u": str(units)}
        if member is not None:
            extra["pm"] = member
        txn_id, _ = await self.transaction(account_id, "spend", -credits, **extra)
        return txn_id

    async def event(self, account_id: str, *, reset_ms: str | None = None, **extra: str) -> str:
        """An account event (tier free, active, no overdraft; ``reset_ms``: its ``rst``);
        ``extra``: pl, pf, rp..."""
        fields: dict[FieldT, EncodableT] = {
            "id": ids.new_id(), "a": account_id, "t": "account", "tier": "free", "st": "active",
            "od": "0",
        }  # fmt: skip
        if reset_ms is not None:
            fields["rst"] = reset_ms
        fields["ca"] = "1700000000000"
        fields.update(extra)
        return await self.xadd(account_id, fields)
