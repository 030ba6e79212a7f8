"""The wheel a user installs carries the Lua scripts and the default config."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from quotagate.engine.script_files import PRELUDE
from quotagate.engine.scripts import SCRIPT_NAMES

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(importlib.util.find_spec("hatchling") is None, reason="needs hatchling")
def test_wheel_ships_scripts_and_default_config(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("quotagate-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for script in (*SCRIPT_NAMES, PRELUDE):
        assert f"quotagate/lua/{script}.lua" in names
    assert "quotagate/default_config.toml" in names
    assert "quotagate/py.typed" in names
