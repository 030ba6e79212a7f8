"""Running this environment's quotagate as another, unprivileged user (tests run as root in CI)."""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
from pathlib import Path

import quotagate
from quotagate.embedded.datadir import reachable_by
from quotagate.embedded.process import RunAs


def python_for(user: RunAs) -> tuple[str, dict[str, str]] | None:
    """A Python that ``user`` may run with this environment's packages, and the env it needs.

    This interpreter when ``user`` can reach it; else the system's Python of the very same
    version (packages choose their code by the exact version) with our package folders on
    PYTHONPATH; None when neither will do.
    """
    if reachable_by(user, Path(sys.executable).resolve().parent):
        return sys.executable, {}
    name = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = shutil.which(name, path="/usr/bin:/usr/local/bin")
    folders = [*site.getsitepackages(), str(Path(quotagate.__file__).resolve().parents[1])]
    if system is None or not all(reachable_by(user, Path(f)) for f in [system, *folders]):
        return None
    version = subprocess.run(
        [system, "-c", "import sys; print(tuple(sys.version_info[:3]))"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    if version != str(tuple(sys.version_info[:3])):
        return None
    return system, {"PYTHONPATH": ":".join(folders)}
