"""The credit engine: atomic credit operations as Lua scripts in Redis."""

from quotagate.engine.charge_list import Charge
from quotagate.engine.engine import ChargeOutcome, CreditEngine, current_period
from quotagate.engine.keys import KeySpace, partition_of

__all__ = ["Charge", "ChargeOutcome", "CreditEngine", "KeySpace", "current_period", "partition_of"]
