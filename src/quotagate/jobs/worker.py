"""The RQ worker class ``quotagate worker`` runs.

RQ's SimpleWorker runs each job in the worker process itself, without a fork: the job
finds the process's event loop, Redis clients and PostgreSQL pool (``jobs.runtime``) ready
from the previous job. Forking per job would open them again for every flush, several times
a second. The cost: a job that crashes the interpreter takes the worker with it; the flush
is built for that (nothing is deleted from the outbox before PostgreSQL commits).
"""

from __future__ import annotations

from rq import SimpleWorker


class LedgerWorker(SimpleWorker):
    """A SimpleWorker; named for the logs and the worker listings."""
