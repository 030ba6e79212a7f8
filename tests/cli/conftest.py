"""The operations tests' fixtures (a ledger database per test) for the command tests."""

from tests.jobs.conftest import ops_database_url, own_ledger, own_ledger_url

__all__ = ["ops_database_url", "own_ledger", "own_ledger_url"]
