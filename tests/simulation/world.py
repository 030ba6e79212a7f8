"""Everything one run shares: its parameters, its random source, the model, the cluster."""

from __future__ import annotations

import random
from collections import Counter, deque
from dataclasses import dataclass, field

from tests.simulation.calls import Answer, Gateways
from tests.simulation.cluster import Cluster
from tests.simulation.model import Model

from quotagate.engine import CreditEngine


class Divergence(AssertionError):
    """The system answered or holds something the acknowledged history does not allow."""


OP_MIX = {
    "consume": 30, "grant": 5, "refund": 6, "hold": 10, "capture": 7, "release": 5,
    "retry": 8, "conflict": 2, "hang_up": 5, "burst": 3, "bad_input": 2, "open_account": 3,
    "set_status": 1, "renew": 1, "renew_again": 1, "schedule_flush": 6,
}  # fmt: skip
"""Relative weights of the operations: what traffic looks like."""

FAULT_MIX = {
    "kill_worker": 4, "restart_redis": 2, "flushall_after_flush": 1, "flushall_lossy": 1,
    "postgres_outage": 2,
}  # fmt: skip
"""Relative weights of the faults, once a step is chosen to be one."""


@dataclass
class Options:
    seed: int
    steps: int
    fault_rate: float = 0.03
    """Chance that a step is a fault rather than an operation."""
    checkpoint_every: int = 100
    gateways: int = 2
    workers: int = 2
    refunds: str = "auto"
    """"named" sends refund_of and expects the cap, "plain" does not, "auto" asks the
    gateway's OpenAPI document whether refunds take refund_of."""
    idempotency_after_recovery: bool = True
    """Retry keys from before a FLUSHALL and recovery, and expect what recovery rebuilt."""
    op_mix: dict[str, int] = field(default_factory=lambda: dict(OP_MIX))
    fault_mix: dict[str, int] = field(default_factory=lambda: dict(FAULT_MIX))


@dataclass
class World:
    options: Options
    rng: random.Random
    model: Model
    cluster: Cluster
    gateways: Gateways
    engine: CreditEngine
    named_refunds: bool = False
    step: int = 0
    postgres_down_until: int | None = None
    next_key: int = 0
    history: deque[str] = field(default_factory=lambda: deque(maxlen=25))
    stats: Counter[str] = field(default_factory=Counter)

    def new_key(self) -> str:
        self.next_key += 1
        return f"sim-{self.options.seed}-{self.next_key}"

    def gateway(self) -> int:
        return self.rng.randrange(len(self.gateways.urls))

    def note(self, text: str) -> None:
        self.history.append(f"step {self.step}: {text}")

    def expect(self, condition: bool, what: str, answer: Answer | None = None) -> None:
        if not condition:
            said = f" (the gateway said {answer.status} {answer.body})" if answer else ""
            raise Divergence(f"{what}{said}")

    @property
    def postgres_down(self) -> bool:
        return self.postgres_down_until is not None
