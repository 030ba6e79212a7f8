"""A small typed client for services: ``QuotagateClient`` (blocking) and
``AsyncQuotagateClient`` (asyncio), both on httpx.

Answers decode into the gateway's own answer structs (``quotagate.api.schemas``); problems
become the typed errors of :mod:`quotagate.errors` (``InsufficientCredits``, ``RateLimited``,
``Unauthorized``, ``Forbidden``...), by their ``code``.
"""

from quotagate.client.aio import AsyncQuotagateClient
from quotagate.client.errors import error_from_problem
from quotagate.client.sync import QuotagateClient
from quotagate.engine.charge_list import Charge
from quotagate.errors import ApiError

__all__ = ["ApiError", "AsyncQuotagateClient", "Charge", "QuotagateClient", "error_from_problem"]
