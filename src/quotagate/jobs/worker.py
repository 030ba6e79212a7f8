"""The RQ worker class ``quotagate worker`` runs.

RQ's SimpleWorker runs each job in the worker process itself, without a fork: the job
finds the process's event loop, Redis clients and PostgreSQL pool (``jobs.runtime``) ready
from the previous job. Forking per job would open them again for every flush, several times
a second. The cost: a job that crashes the interpreter takes the worker with it; the flush
is built for that (nothing is deleted from the outbox before PostgreSQL commits).
"""

from __future__ import annotations

from typing import Any

from rq import SimpleWorker

from quotagate.engine.memory import refuse_evicting_servers
from quotagate.jobs import runtime


class LedgerWorker(SimpleWorker):
    """A SimpleWorker; named for the logs and the worker listings."""

    def work(self, *args: Any, **kwargs: Any) -> bool:
        refuse_evicting_servers(runtime.current().settings)  # before the first job
        return bool(super().work(*args, **kwargs))
