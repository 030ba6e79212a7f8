"""quotagate.logs: one line per record in every format, whatever the text it carries, read
back to the same values; the settings that choose the format and the level."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from quotagate.config import parse_config
from quotagate.errors import ConfigError
from quotagate.logs import (
    JsonFormatter,
    LogfmtFormatter,
    TextFormatter,
    configure,
    logfmt_value,
    logging_config,
)
from quotagate.settings import Secret, Settings

HOSTILE = [
    'a "quoted" path',
    "line\nbreak",
    'forged\n{"level":"info","message":"fake"}',
    "key=value other=thing",
    "nul\x00byte",
    "carriage\rreturn",
    "next line\x85and\u2028separators\u2029",
    "back\\slash",
    "tab\there",
    "",
    "ümlaut",
]

_PAIR = re.compile(r'([a-z_]+)=("(?:[^"\\]|\\.)*"|[^ ]*)(?: |$)')


def parse_logfmt(line: str) -> dict[str, Any]:
    """A logfmt line back to its values: quoted ones with JSON's escapes; the whole line
    must be pairs."""
    pairs = _PAIR.findall(line)
    assert " ".join(f"{k}={v}" for k, v in pairs) == line, line
    return {k: json.loads(v) if v.startswith('"') else v for k, v in pairs}


def record(message: str = "hello", **fields: Any) -> logging.LogRecord:
    made = logging.LogRecord("quotagate.test", logging.INFO, __file__, 1, message, (), None)
    made.__dict__.update(fields)
    return made


def one_line(text: str, *, ascii_only: bool = True) -> str:
    # Every separator Python's own splitlines knows, not only \n: a log reader may use it.
    assert len(text.splitlines()) == 1, text
    assert text.isascii() or not ascii_only, text
    return text


@pytest.mark.parametrize("value", HOSTILE)
def test_json_lines_stay_one_line_and_read_back(value: str) -> None:
    line = one_line(JsonFormatter().format(record(value, path=value, account=value)))
    parsed = json.loads(line)
    assert (parsed["message"], parsed["path"], parsed["account"]) == (value, value, value)
    assert list(parsed)[:4] == ["time", "level", "logger", "message"]


@pytest.mark.parametrize("value", HOSTILE)
def test_logfmt_lines_stay_one_line_and_read_back(value: str) -> None:
    line = one_line(LogfmtFormatter().format(record(value, path=value, account=value)))
    parsed = parse_logfmt(line)
    assert (parsed["message"], parsed["path"], parsed["account"]) == (value, value, value)
    assert parsed["level"] == "info" and parsed["logger"] == "quotagate.test"


@pytest.mark.parametrize("value", HOSTILE)
def test_text_lines_stay_one_line(value: str) -> None:
    # Text is for people: a printable letter stays as it is in the message.
    line = one_line(TextFormatter().format(record(value, path=value)), ascii_only=False)
    assert " INFO quotagate.test: " in line
    assert parse_logfmt(line.split(" path=", 1)[1].join(["path=", ""]))["path"] == value


def test_a_field_cannot_pass_for_another() -> None:
    line = LogfmtFormatter().format(record(account="x status=500", status=200))
    parsed = parse_logfmt(line)
    assert (parsed["account"], parsed["status"]) == ("x status=500", "200")
    assert line.count("status=") == 2 and 'account="x status=500"' in line


def test_plain_values_are_written_as_they_are() -> None:
    assert [logfmt_value(v) for v in ("alice", "/v1/authz", 3, 0.25, True)] == [
        "alice", "/v1/authz", "3", "0.25", "true",
    ]  # fmt: skip
    line = LogfmtFormatter().format(record(account=None, cost=None, status=402))
    assert "account" not in line and "cost" not in line and line.endswith("status=402")


def test_the_time_is_iso_8601_utc_with_milliseconds() -> None:
    made = record()
    made.created = 1767225600.0456  # 2026-01-01T00:00:00.045Z
    assert json.loads(JsonFormatter().format(made))["time"] == "2026-01-01T00:00:00.045Z"
    made.created += 61
    assert json.loads(JsonFormatter().format(made))["time"] == "2026-01-01T00:01:01.045Z"


def test_a_secret_field_shows_its_repr() -> None:
    url = Secret("redis://:hunter2-password@127.0.0.1:6379/0")
    for formatter in (JsonFormatter(), LogfmtFormatter(), TextFormatter()):
        line = formatter.format(record(url=url))
        assert "hunter2" not in line and "***" in line


def _failing() -> logging.LogRecord:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        made = record("it failed")
        made.exc_info = sys.exc_info()
        return made


def test_a_traceback_is_a_field_or_indented_lines() -> None:
    parsed = json.loads(one_line(JsonFormatter().format(_failing())))
    assert parsed["exception"].startswith("Traceback") and "ValueError: bad" in parsed["exception"]
    assert (
        "ValueError: bad"
        in parse_logfmt(one_line(LogfmtFormatter().format(_failing())))["exception"]
    )
    head, *trace = TextFormatter().format(_failing()).split("\n")
    assert head.endswith("quotagate.test: it failed") and trace
    assert all(row.startswith("    ") for row in trace)


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """The loggers configure() touches, as they were."""
    names = ["", *logging_config("json", "info")["loggers"]]
    saved = [
        (logger, logger.handlers[:], logger.level, logger.propagate)
        for logger in map(logging.getLogger, names)
    ]
    yield
    for logger, handlers, level, propagate in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


@pytest.mark.usefixtures("restored_logging")
def test_configure_sends_every_logger_through_one_formatter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure("logfmt", "warning")
    logging.getLogger("quotagate.some.module").info("not shown")
    logging.getLogger("quotagate.some.module").warning("shown %s", "here")
    logging.getLogger("uvicorn.error").warning("from uvicorn")
    lines = stream.getvalue().splitlines()
    assert [parse_logfmt(line)["message"] for line in lines] == ["shown here", "from uvicorn"]
    configure("json", "info")  # again: the first handler is replaced, not doubled
    logging.getLogger("quotagate.some.module").info("once")
    assert [json.loads(line)["message"] for line in stream.getvalue().splitlines()[2:]] == ["once"]


def test_a_bad_format_or_level_is_refused() -> None:
    with pytest.raises(ValueError, match="log format 'xml'"):
        logging_config("xml", "info")
    with pytest.raises(ValueError, match="log level 'loud'"):
        logging_config("json", "loud")
    assert logging_config("text", "DEBUG")["root"]["level"] == "DEBUG"


CONFIG = """
[resources]
api_call = 1
[tiers.free]
credit_limit = 1
monthly_grant = 1
"""


def test_the_environment_wins_over_the_config_file() -> None:
    config = parse_config(CONFIG + '[logs]\nformat = "text"\nlevel = "warning"\n')
    assert Settings.from_env({}).logging(config) == ("text", "warning")
    env = {"QUOTAGATE_LOG_FORMAT": "LOGFMT", "QUOTAGATE_LOG_LEVEL": "debug"}
    assert Settings.from_env(env).logging(config) == ("logfmt", "debug")
    assert Settings.from_env({}).logging(parse_config(CONFIG)) == ("json", "info")


@pytest.mark.parametrize(
    ("name", "value"), [("QUOTAGATE_LOG_FORMAT", "xml"), ("QUOTAGATE_LOG_LEVEL", "verbose")]
)
def test_a_bad_log_setting_names_itself(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"{name}: '{value}' is not one of"):
        Settings.from_env({name: value})


def test_a_bad_logs_table_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"logs\.format"):
        parse_config(CONFIG + '[logs]\nformat = "xml"\n')
