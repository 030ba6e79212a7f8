"""Alembic migrations of the ledger, shipped inside the package (``quotagate migrate``)."""
