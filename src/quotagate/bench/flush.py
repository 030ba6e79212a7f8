"""The ledger flush against a bare COPY of the same rows into the same table."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quotagate.bench.runner import Run


async def measure(run: Run, progress: Callable[[str], None]) -> None:
    if importlib.util.find_spec("quotagate.ledger") is None:
        progress("flush: skipped, this build has no ledger")
        return
    raise NotImplementedError("flush measurement")
