"""The batcher a test watches: the engine's own, or on a cluster the one of a master."""

from __future__ import annotations

from quotagate.engine import CreditEngine
from quotagate.engine.batching import ScriptRunner
from quotagate.engine.routing import ClusterScriptRunner


def batcher_of(engine: CreditEngine, account_id: str) -> ScriptRunner:
    """The ScriptRunner that sends ``account_id``'s calls."""
    runner = engine.runner
    if isinstance(runner, ClusterScriptRunner):
        return runner.runner_for(engine.keys.account(account_id).account)
    return runner
