"""Run `quotagate` in this process, through its real entry point (``quotagate.cli.main.main``:
the same error handling and exit codes as the installed command), with its own environment
and captured output. A subprocess costs a second of imports per call; this costs nothing."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from quotagate.cli.main import main


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    # The whole environment comes back afterwards: a command fills in what a stack file
    # gives it, and that must not leak into the next test.
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _logging() -> Iterator[None]:
    # `worker` and `scheduler` configure the process's logging: give the session its own back.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def invoke(args: list[str], env: dict[str, str]) -> Result:
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["quotagate", *args]
    code = 0
    try:
        with (
            _environment(env),
            _logging(),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
    return Result(code, out.getvalue(), err.getvalue())
