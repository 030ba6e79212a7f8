"""The ledger flush against a bare COPY of the same rows into the same table.

The measurement is the ledger's own (:func:`quotagate.ledger.bench.measure_flush`): spend
entries are put in one partition's outbox, the flush moves them into ``credit_transactions``
(read, parse, INSERT ... ON CONFLICT with the snapshot updates, commit, trim), then the same
rows are deleted and COPYed into the same table on one connection. Both run on the stage's
database, migrated first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from quotagate.bench import gateway

if TYPE_CHECKING:
    from quotagate.bench.runner import Run


async def measure(run: Run, progress: Callable[[str], None]) -> None:
    from quotagate.ledger.bench import measure_flush

    await asyncio.to_thread(gateway.migrate, run.stage)
    rows = run.options.flush_rows
    progress(f"measuring the flush of {rows} rows against a bare COPY")
    result = await measure_flush(run.stage.redis_url, run.stage.database_url, rows=rows)
    run.add_rows(
        "flush/worker",
        rows,
        result.flush_seconds,
        generator="ledger flush",
        baseline="flush/copy",
        note=(
            f"batch {result.batch_size}, 1 partition; apply only: unnest "
            f"{result.apply_unnest_rows_per_second}/s, COPY staging "
            f"{result.apply_copy_rows_per_second}/s"
        ),
    )
    run.add_rows("flush/copy", rows, result.copy_seconds, generator="COPY")
