"""How quotagate's processes write their logs: one line per record, as JSON, logfmt or text.

``quotagate serve`` (through uvicorn's ``log_config``, so each gateway process gets it),
``quotagate worker`` and ``quotagate scheduler`` call :func:`logging_config` /
:func:`configure`; QUOTAGATE_LOG_FORMAT and QUOTAGATE_LOG_LEVEL, or ``[logs]`` in the config
file, choose the format and the level (docs/logs.md).

Every line is one record, whatever the text it carries: a path, an account id or an error
message from outside may hold quotes, newlines, ``=`` or NUL, and none of them may end the
line or pass for a field of its own. JSON escapes every character outside printable ASCII
(``\\n``, ``\\u0000``, ``\\u0085``...); logfmt quotes any value that is not plain printable
ASCII and escapes it the same way; text does so for the message and the fields. A traceback
becomes a field (JSON, logfmt) or indented lines under its record (text).

Fields: ``time`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``, ``message``, then the
record's own (``extra=`` of the logging call, the access line's fields), then ``exception``.
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
import sys
import time
from collections.abc import Iterable
from typing import Any, Literal, get_args

import msgspec

LogFormat = Literal["json", "logfmt", "text"]
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)

DEFAULT_LOG_FORMAT: LogFormat = "json"
"""Lines for a log collector: the processes this configures run as services."""
DEFAULT_LOG_LEVEL: LogLevel = "info"
"""Info: the access line of every request, and what the jobs report."""

_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}
"""What every record has (and uvicorn's ``color_message``, its message with ANSI colours):
anything else on a record is a field of its own."""

FIELDS_ATTRIBUTE = "quotagate_fields"
"""A record's own fields, in order, when it lists them (str, int, float, bool or None
values): read as they are, rather than found among all its attributes."""

_PLAIN_VALUE = re.compile(r"[\x21\x23-\x3c\x3e-\x5b\x5d-\x7e]+")
"""A logfmt value written as it is: printable ASCII without space, ``"``, ``=`` or ``\\``."""


class _Clock:
    """``2026-01-31T12:00:00.123Z``: the part up to the second is made once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def iso(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return "%s.%03dZ" % (self._prefix, int((created - second) * 1000))  # noqa: UP031


_PLAIN = frozenset({str, int, float, bool, type(None)})


def _shown(value: Any) -> Any:
    """A field's value as the line shows it. A str subclass (the settings' Secret) by its
    repr, which hides what it must; anything JSON has no word for, as text."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, tuple, dict)):
        return json.loads(json.dumps(value, default=str))
    return str(value)


class StructuredFormatter(logging.Formatter):
    """A record's fields in order (see the module docstring); subclasses write the line."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = _Clock()

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        out: dict[str, Any] = {
            "time": self._clock.iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        attributes = record.__dict__
        own = attributes.get(FIELDS_ATTRIBUTE)
        if own is not None:  # a record that lists its fields (the access line): plain values
            out.update(own)
        else:
            for key, value in attributes.items():
                if key not in _RECORD_ATTRIBUTES and key not in out:
                    out[key] = value if type(value) in _PLAIN else _shown(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return out


_JSON = json.JSONEncoder(separators=(",", ":"), default=str)
"""Made once: ``json.dumps`` with any option makes an encoder per call. It escapes every
character outside printable ASCII (``ensure_ascii``)."""


_FAST_JSON = msgspec.json.Encoder(enc_hook=str)
"""Several times faster; it escapes quotes, backslashes and control characters but writes
other characters as UTF-8, so a line that is not all ASCII is made again by :data:`_JSON`."""


class JsonFormatter(StructuredFormatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = self.fields(record)
        line = _FAST_JSON.encode(fields)
        return line.decode("ascii") if line.isascii() else _JSON.encode(fields)


def logfmt_value(value: Any) -> str:
    """A value in logfmt: as it is when plain, else quoted with JSON's escapes."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if _PLAIN_VALUE.fullmatch(text) else json.dumps(text)


def logfmt(pairs: Iterable[tuple[str, Any]]) -> str:
    """``key=value`` pairs joined by spaces; a None value is left out."""
    return " ".join(f"{key}={logfmt_value(value)}" for key, value in pairs if value is not None)


class LogfmtFormatter(StructuredFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return logfmt(self.fields(record).items())


def _printable(text: str) -> str:
    """Text with any control or line-breaking character escaped, as JSON would."""
    return text if text.isprintable() else json.dumps(text)[1:-1]


class TextFormatter(StructuredFormatter):
    """For a person at a terminal: ``time LEVEL logger: message key=value...``, and a
    traceback as indented lines under it."""

    def format(self, record: logging.LogRecord) -> str:
        fields = self.fields(record)
        head = (
            f"{fields.pop('time')} {fields.pop('level').upper()} {fields.pop('logger')}: "
            f"{_printable(fields.pop('message'))}"
        )
        trace = [fields.pop(key) for key in ("exception", "stack") if key in fields]
        rest = logfmt(fields.items())
        line = f"{head} {rest}" if rest else head
        for block in trace:
            line += "\n" + "\n".join("    " + _printable(row) for row in block.splitlines())
        return line


FORMATTERS: dict[str, type[StructuredFormatter]] = {
    "json": JsonFormatter,
    "logfmt": LogfmtFormatter,
    "text": TextFormatter,
}


def logging_config(log_format: str, level: str) -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` document: every record, quotagate's, uvicorn's,
    RQ's and the libraries', through one handler on stderr in ``log_format``, from
    ``level`` up. uvicorn's access log stays off: the gateway writes its own access line
    (:mod:`quotagate.api.access`), with the account and the decision."""
    if log_format not in FORMATTERS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    level_name = level.upper()
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LOG_LEVELS)}")
    formatter = FORMATTERS[log_format]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"quotagate": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "quotagate",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level_name, "handlers": ["stderr"]},
        "loggers": {
            # uvicorn's own config gives these handlers of their own and stops propagation.
            "uvicorn": {"level": level_name, "handlers": [], "propagate": True},
            "uvicorn.error": {"level": level_name, "handlers": [], "propagate": True},
            "uvicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
            # Alembic says at INFO which of its plugins it loads, at every start.
            "alembic": {"level": "WARNING"},
        },
    }


class _OurHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure` adds: the one it replaces when called again."""


def configure(log_format: str, level: str) -> None:
    """Configure this process's logging as :func:`logging_config` describes, leaving the
    handlers others put on the root logger (a test's capture) in place."""
    config = logging_config(log_format, level)
    root = logging.getLogger()
    for handler in root.handlers[:]:
        if isinstance(handler, _OurHandler):
            root.removeHandler(handler)
    handler = _OurHandler(sys.stderr)
    handler.setFormatter(FORMATTERS[log_format]())
    root.addHandler(handler)
    root.setLevel(config["root"]["level"])
    for name, settings in config["loggers"].items():
        logger = logging.getLogger(name)
        logger.setLevel(settings["level"])
        if "handlers" in settings:
            logger.handlers.clear()
            logger.propagate = settings["propagate"]
