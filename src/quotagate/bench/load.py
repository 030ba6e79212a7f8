"""HTTP load: what to send (:class:`HttpLoad`) and what came back (:class:`LoadResult`).

Two generators send it: wrk when installed (``apt-get install wrk``; a C client that leaves the
server most of the CPU), otherwise our own asyncio client (:mod:`quotagate.bench.pyload`). Both
hold ``concurrency`` keep-alive connections, each sending its next request when the answer to
the last one arrived (a closed loop), for a fixed time after a short warm-up.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field

ACCOUNT = "{account}"
"""Placeholder in a path, header value or body, replaced by the account of each request."""


@dataclass(frozen=True, slots=True)
class Accounts:
    """The accounts a load charges: one hot account, or ``count`` accounts ``stem000000``..."""

    stem: str
    count: int = 1

    @property
    def hot(self) -> bool:
        return self.count == 1

    def name(self, i: int) -> str:
        return self.stem if self.hot else f"{self.stem}{i:06d}"

    def all(self) -> list[str]:
        return [self.name(i) for i in range(self.count)]


@dataclass(frozen=True, slots=True)
class HttpLoad:
    """One kind of request, sent over and over; ``{account}`` is filled per request."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None
    accounts: Accounts | None = None
    """None: the request names no account."""


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests: int
    """Answers with the expected status within the measured window."""
    errors: int
    """Failed requests and answers with another status."""
    duration_s: float
    p50_ms: float | None
    p99_ms: float | None
    generator: str
    cpu_s: float | None = None
    """CPU seconds the measured side spent in the window, when the generator knows it."""

    @property
    def rate(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def available_generator(preference: str = "auto") -> str:
    """``wrk`` when asked for or installed (auto), else ``pyload``."""
    if preference == "pyload":
        return "pyload"
    if shutil.which("wrk"):
        return "wrk"
    if preference == "wrk":
        raise FileNotFoundError("wrk is not installed (Debian/Ubuntu: apt-get install wrk)")
    return "pyload"


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """The value below which ``fraction`` of the (sorted) values lie; None when empty."""
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]
