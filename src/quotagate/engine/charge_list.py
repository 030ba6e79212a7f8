"""Many charges at once, for any accounts: what one is, and the order they are sent in.

A list of charges is sent in rounds. In each round every account sends the next of its
charges that can go together without changing their order: a run of charges without
idempotency keys (the runner sends those as one script call) followed by charges with keys
(each a call of its own, after that one). All accounts' charges of a round are made in one
event-loop tick, so they share one pipeline and run in parallel in Redis; the next round starts
when the previous one is answered. A list without idempotency keys, or with a key on every
charge, goes in one round. Rounds of all lists together keep at most MAX_CHARGES_IN_FLIGHT
charges waiting on Redis.

Why the order matters: charges of one account see each other's effect (the second of two
charges may find the balance the first left). Without rounds, a keyless charge made after a
keyed one would join the keyless call placed before that keyed one and run first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Charge:
    """One charge of a list: what :meth:`CreditEngine.consume` takes, with its account."""

    account_id: str
    resource: str
    units: int = 1
    description: str | None = None
    metadata: dict[str, Any] | None = None
    idempotency_key: str | None = None


def rounds(charges: Sequence[Charge]) -> list[list[int]]:
    """The charges' indexes grouped into rounds, each round in the list's order.

    Within one account, a charge without a key after a charge with a key starts the account's
    next round; everything else stays in the account's current round."""
    current: dict[str, int] = {}
    keyed: set[str] = set()
    grouped: list[list[int]] = []
    for index, charge in enumerate(charges):
        account = charge.account_id
        number = current.get(account, 0)
        if charge.idempotency_key is None and account in keyed:
            number += 1
            keyed.discard(account)
        elif charge.idempotency_key is not None:
            keyed.add(account)
        current[account] = number
        if number == len(grouped):
            grouped.append([])
        grouped[number].append(index)
    return grouped


MAX_CHARGES_IN_FLIGHT = 8192
"""Most charges of lists sent to Redis and not yet answered, over all lists at once. The
engine's one connection answers calls in order, and each call must be answered within the
client's socket timeout of being sent: a hundred lists of a thousand charges queued at once
would ask Redis for seconds of work in one go, and the last calls (a hook request's among
them) would wait behind all of it. About 8,000 charges are a tenth of a second of Redis."""


class InFlight:
    """Counts the charges of lists in flight; a round waits until it fits under the limit
    (or nothing else is in flight)."""

    def __init__(self, limit: int = MAX_CHARGES_IN_FLIGHT) -> None:
        self.limit = limit
        self.charges = 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def room_for(self, charges: int) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(
                lambda: self.charges == 0 or self.charges + charges <= self.limit
            )
            self.charges += charges
        try:
            yield
        finally:
            async with self._changed:
                self.charges -= charges
                self._changed.notify_all()
