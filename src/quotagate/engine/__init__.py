"""The credit engine: atomic credit operations as Lua scripts in Redis."""

from quotagate.engine.engine import CreditEngine, current_period
from quotagate.engine.keys import KeySpace, partition_of

__all__ = ["CreditEngine", "KeySpace", "current_period", "partition_of"]
