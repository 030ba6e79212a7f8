"""What `quotagate up` hands its parts: the stack's stores, and text logs for a terminal
unless the operator chose a format."""

from __future__ import annotations

import pytest

from quotagate.embedded.stack import _child_env


def test_the_parts_log_text_unless_a_format_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QUOTAGATE_LOG_FORMAT", raising=False)
    monkeypatch.delenv("QUOTAGATE_QUEUE_URL", raising=False)
    env = _child_env("redis://127.0.0.1:1/0", "postgresql://127.0.0.1:2/q")
    assert env["QUOTAGATE_LOG_FORMAT"] == "text"
    assert env["QUOTAGATE_QUEUE_URL"] == env["QUOTAGATE_REDIS_URL"] == "redis://127.0.0.1:1/0"
    monkeypatch.setenv("QUOTAGATE_LOG_FORMAT", "json")
    assert _child_env("redis://a", "postgresql://b")["QUOTAGATE_LOG_FORMAT"] == "json"
