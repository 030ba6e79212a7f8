"""API keys: made by the CLI, stored hashed in Postgres, checked from an in-process cache."""

from quotagate.auth.cache import KeyCache
from quotagate.auth.keys import SCOPES, ApiKey, Scope
from quotagate.auth.store import KeyStore

__all__ = ["SCOPES", "ApiKey", "KeyCache", "KeyStore", "Scope"]
