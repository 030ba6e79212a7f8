from tests.support.gateway import (  # noqa: F401 - fixtures
    api_keys,
    gateway,
    gateway_prefix,
    http,
    migrated_database_url,
)
