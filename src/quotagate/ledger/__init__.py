"""The durable ledger: PostgreSQL schema and migrations, the flush, write-through, history.

Public names (see each module's docstring):

    Ledger            connect, ensure_current, ping, write_through, history, books reads
    outbox_lag        entries waiting per partition and the oldest's age (Redis only)
    flush_partition   flush one partition's outbox (under its lease); flush_all: every one
    pending_effects   per account, the outbox's effect not yet in the ledger (reconciliation)
    account_books     Redis balance, snapshot, pending effect and ledger sum per account
    upgrade           apply the packaged migrations (``quotagate migrate``)
"""

from quotagate.ledger.books import AccountBooks, PendingEffect, account_books, pending_effects
from quotagate.ledger.flush import FlushResult, flush_all, flush_partition
from quotagate.ledger.history import HistoryPage, Transaction
from quotagate.ledger.lag import OutboxLag, PartitionLag, outbox_lag
from quotagate.ledger.lease import FlushLease
from quotagate.ledger.ledger import FlushState, Ledger, Snapshot
from quotagate.ledger.migrate import head_revision, upgrade

__all__ = [
    "AccountBooks",
    "FlushLease",
    "FlushResult",
    "FlushState",
    "HistoryPage",
    "Ledger",
    "OutboxLag",
    "PartitionLag",
    "PendingEffect",
    "Snapshot",
    "Transaction",
    "account_books",
    "flush_all",
    "flush_partition",
    "head_revision",
    "outbox_lag",
    "pending_effects",
    "upgrade",
]
