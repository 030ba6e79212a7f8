"""What the operators' commands share: progress, exit codes, printing (their connections come
from quotagate.cli.backends).

Exit codes (every operations command):

    0  done; for `reconcile`, the books balance
    1  `reconcile`: the books do not balance (the drifts are printed)
    2  bad input or configuration (one sentence on stderr)
    3  a backend (Redis, PostgreSQL) did not answer
    4  refused: the command would lose data as things stand (`recover` with a full outbox)
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import click

from quotagate.cli.failures import EXIT_FAILED

# Reconciliation that found drift is work that ran and found a problem.
EXIT_DRIFT = EXIT_FAILED

json_option = click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")


class Progress:
    """A progress bar on stderr for people; nothing at all for scripts (--json) or pipes."""

    def __init__(self, bar: Any | None) -> None:
        self._bar = bar

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)


@contextmanager
def progress(length: int | None, label: str, *, hidden: bool) -> Iterator[Progress]:
    if hidden or not sys.stderr.isatty():
        yield Progress(None)
        return
    bar: Any = click.progressbar(length=length, label=label, file=sys.stderr, show_pos=True)
    with bar:
        yield Progress(bar)


def fields(values: Mapping[str, Any]) -> str:
    """``name  value`` lines, aligned: one record for people."""
    width = max(len(k) for k in values)
    return "\n".join(f"{k.ljust(width)}  {_text(v)}" for k, v in values.items())


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value)


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def fail(message: str, code: int) -> None:
    """One sentence on stderr, and the exit status that says what kind of failure it was."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)  # not click's Exit: `quotagate` runs click in non-standalone mode
