"""Every log record of the test session, read for API keys and webhook secrets.

Installed on the root logger for the whole session (``tests/conftest.py``); the session fails
at its end, naming the loggers, if any record's text (message, arguments, traceback) held
something shaped like an API key (``qg_<16 hex>_<secret>``) or a webhook secret
(``whsec_<base64>``). Records of processes the tests start are not seen here.
"""

from __future__ import annotations

import logging
import re

SECRET = re.compile(r"qg_[0-9a-f]{16}_[A-Za-z0-9_-]{16,}|whsec_[A-Za-z0-9+/]{16,}")


class SecretWatch(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.found: list[tuple[str, str]] = []
        """(logger, the first characters of what looked like a secret)."""
        self.records = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.records += 1
        try:
            text = record.getMessage()
        except Exception:
            text = f"{record.msg} {record.args}"
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        for match in SECRET.findall(text):
            self.found.append((record.name, match[:10] + "..."))


WATCH = SecretWatch()
