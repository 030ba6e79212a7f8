from collections.abc import Iterator
from typing import Any

import pytest
from tests.api.test_hook_protocol import Conn
from tests.support.gateway import (  # noqa: F401 - fixtures
    GatewayServer,
    api_keys,
    gateway,
    gateway_prefix,
    http,
    migrated_database_url,
)

from quotagate.api.front import Front


@pytest.fixture
def conn(gateway: GatewayServer) -> Iterator[Conn]:  # noqa: F811
    """A raw HTTP/1.1 connection to the module's gateway."""
    c = Conn(gateway)
    yield c
    c.close()


@pytest.fixture
def through_asgi(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many requests the front answered through ASGI, rather than in the protocol: [n]."""
    count = [0]
    call = Front.asgi

    async def counted(self: Front, *args: Any) -> None:
        count[0] += 1
        await call(self, *args)

    monkeypatch.setattr(Front, "asgi", counted)
    return count
