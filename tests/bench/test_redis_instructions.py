"""scripts/redis-instructions, short: it counts a real redis-server's instructions per charge
under callgrind, with and without an idempotency key, and leaves nothing running."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "redis-instructions"


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_instructions_per_charge_are_counted_with_and_without_a_key() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--accounts", "50", "--charges", "200"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    figures = dict(re.findall(r"^  (without a key|with an idempotency key)\s+([\d,]+)$",
                              proc.stdout, re.MULTILINE))  # fmt: skip
    plain = int(figures["without a key"].replace(",", ""))
    keyed = int(figures["with an idempotency key"].replace(",", ""))
    # A charge is tens of thousands of instructions; its idempotency record (a read, then a
    # write with an expiry) adds to them.
    assert 20_000 < plain < keyed < 1_000_000, proc.stdout
    # Its redis-server ran with --dir in a qg-instructions-* directory: none is left running.
    left = subprocess.run(["pgrep", "-f", "qg-instructions-"], capture_output=True, text=True)
    assert left.stdout.strip() == "", left.stdout
