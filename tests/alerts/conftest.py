"""Fixtures of the alert tests: an engine whose config has alert rules, on the test's prefix."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from tests.conftest import EngineFactory
from tests.ledger.support import config_text

from quotagate.engine import CreditEngine

ALERTS = """
[[alerts.balance]]
tier = "free"
below = 50

[[alerts.balance]]
tier = "pro"
below_percent = 10

[[alerts.consumption]]
tier = "pro"
window_hours = 1
baseline_windows = 3
multiple = 3.0
min_credits = 20

[alerts.expiry]
warn_hours_before = 48

[alerts.webhooks]
timeout_ms = 1000
max_attempts = 4
backoff_seconds = 0.05
"""
"""Free accounts: below 50 credits. Pro: below 10% of 1000, and a window's spend above three
times the usual (20 credits at least). The monthly tier renews by reset: expiry warnings."""


def alert_config_text(partitions: int = 4) -> str:
    return config_text(partitions) + ALERTS


@pytest.fixture
async def aengine(make_engine: EngineFactory) -> CreditEngine:
    return await make_engine(alert_config_text())


@pytest.fixture
def acct(key_prefix: str) -> Callable[[str], str]:
    return lambda name: f"{key_prefix}-{name}"
