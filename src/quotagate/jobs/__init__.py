"""Queued jobs, run by RQ workers (``quotagate worker``).

    queues     queue names and the queue Redis connection
    runtime    one event loop, engine and ledger per worker process, for every job
    flush      the flush job per partition, and the helpers that enqueue it
    trigger    the gateway's early flush when an outbox grows past a threshold
    worker     the RQ worker class ``quotagate worker`` runs (no fork per job)

The operations jobs (renewal, hold expiry, reconciliation, recovery) and the ``rq cron``
schedule live beside them.
"""
