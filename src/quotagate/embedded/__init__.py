"""Embedded Valkey and PostgreSQL for `quotagate up`: pip-installed servers, no system packages.

:class:`EmbeddedValkey` and :class:`EmbeddedPostgres` each start one server on a free loopback
port with its data in a :class:`DataDir` that survives restarts, and hand back a
:class:`~quotagate.embedded.process.Child` to stop it.
"""

from quotagate.embedded.datadir import DataDir, default_data_dir
from quotagate.embedded.postgres import EmbeddedPostgres
from quotagate.embedded.process import Child
from quotagate.embedded.valkey import EmbeddedValkey

__all__ = ["Child", "DataDir", "EmbeddedPostgres", "EmbeddedValkey", "default_data_dir"]
