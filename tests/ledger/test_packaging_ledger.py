"""`quotagate migrate` works from the wheel: the migrations and the lease script ship in it."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from quotagate.ledger.migrate import head_revision

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(importlib.util.find_spec("hatchling") is None, reason="needs hatchling")
def test_migrate_runs_from_the_installed_wheel(tmp_path: Path, empty_database_url: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("quotagate-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "quotagate/lua/lease.lua" in names
    assert "quotagate/ledger/migrations/env.py" in names
    assert "quotagate/ledger/migrations/script.py.mako" in names
    assert "quotagate/ledger/migrations/versions/v0001_initial.py" in names

    installed = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(installed)
    env = {**os.environ, "PYTHONPATH": str(installed), "QUOTAGATE_DATABASE_URL": empty_database_url}
    where = subprocess.run(
        [sys.executable, "-c", "import quotagate; print(quotagate.__file__)"],
        env=env, check=True, capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert where.stdout.startswith(str(installed))
    done = subprocess.run(
        [sys.executable, "-m", "quotagate.cli.main", "migrate"],
        env=env, capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"revision {head_revision()} (current)" in done.stdout
