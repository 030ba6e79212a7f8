"""quotagate: a Redis-backed credit and quota gateway.

The library API for services that embed it without HTTP is :class:`CreditEngine`.
"""

from quotagate.config import Config, load_config
from quotagate.engine import CreditEngine

__all__ = ["Config", "CreditEngine", "load_config"]
__version__ = "0.1.0"
