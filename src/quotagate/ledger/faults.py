"""Named points where a flush can be held, so fault tests can kill a worker exactly there.

Set ``QUOTAGATE_FLUSH_PAUSE=<point>:<marker file>`` in a worker's environment: when a flush
reaches ``<point>`` it writes its pid to the marker file and waits (an hour), and the test,
which polls for the file, sends SIGKILL. Points:

    before_commit   the batch is inserted inside the open Postgres transaction
    after_commit    Postgres committed; the stream entries are not deleted yet

Unset (always, in production) it costs one dictionary lookup per batch.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

PAUSE_ENV = "QUOTAGATE_FLUSH_PAUSE"

PAUSE_SECONDS = 3600.0
"""Long enough for any test to notice the marker and kill the process."""


async def pause_point(name: str) -> None:
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return
    point, _, marker = spec.partition(":")
    if point != name or not marker:
        return
    # A few bytes to a local file, once, in a test: blocking the loop here is harmless.
    Path(marker).write_text(str(os.getpid()))  # noqa: ASYNC240
    await asyncio.sleep(PAUSE_SECONDS)
