"""A byte-exact picture of a test's keyspace, to prove an operation wrote nothing."""

from __future__ import annotations

from quotagate.engine.connection import sync_redis_from_url


def keyspace(redis_url: str, prefix: str) -> dict[bytes, bytes]:
    """Every key under ``prefix`` with its DUMP (type, value and encoding, byte for byte)."""
    client = sync_redis_from_url(redis_url)
    try:
        out = {}
        for key in sorted(client.scan_iter(match=f"{prefix}:*", count=1000)):
            dumped = client.dump(key)
            assert dumped is not None
            out[key] = dumped + str(client.pttl(key) > 0).encode()
        return out
    finally:
        client.close()
