"""The README's tour, line by line, against a real `quotagate up`: it runs as written, and every
command prints what the README says it prints.

The tour is read from README.md at test time, so an edit that breaks a step, or an answer that
no longer reads as documented, fails here. Under each command, lines starting with `#  ` are its
expected output, one pattern per line in order (other lines may come between), with `...` for
anything.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from tests.embedded.test_up import _clean_env, running_up
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
TOUR_HEADING = "## A short tour"
EXPECTED_PREFIX = "#  "
STEP_MARK = "@@tour-step {}@@"
TOUR_TIMEOUT_SECONDS = 120.0

# What the tour must show, each as a fragment of one of its commands.
TOUR_COVERS = {
    "keys": "quotagate keys create",
    "account": "-X PUT $Q/v1/accounts/alice",
    "grant": "/credits",
    "consume": "/consume",
    "replay": "Idempotency-Key: req-1",
    "hold": "/holds -H",
    "capture": "/capture",
    "history": "/transactions",
    "hook": "/v1/authz",
    "me": "/v1/me",
    "status": "quotagate status",
    "flush": "quotagate flush",
    "reconcile": "quotagate reconcile",
}


@dataclass
class Step:
    """One command of the tour (continuation lines joined) and the output it promises."""

    command: str
    expected: list[str] = field(default_factory=list)


def tour_blocks(readme: str) -> list[str]:
    """The `sh` code blocks of the README's tour section, as written."""
    start = readme.index(TOUR_HEADING)
    end = readme.find("\n## ", start + len(TOUR_HEADING))
    section = readme[start : end if end != -1 else len(readme)]
    return re.findall(r"^```sh\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL)


def parse_steps(block: str) -> list[Step]:
    """Commands and their expected-output comments, in order."""
    steps: list[Step] = []
    pending = ""
    for line in block.splitlines():
        if line.startswith(EXPECTED_PREFIX) and not pending:
            assert steps, f"expected output before any command: {line!r}"
            steps[-1].expected.append(line.removeprefix(EXPECTED_PREFIX))
        elif not line.strip() or (line.lstrip().startswith("#") and not pending):
            continue
        elif line.endswith("\\"):
            pending += line + "\n"
        else:
            steps.append(Step(pending + line))
            pending = ""
    assert not pending, f"a command ends in a continuation: {pending!r}"
    return steps


def tour_script(steps: list[Step]) -> str:
    """The steps verbatim, each after a line that marks where its output starts."""
    lines = []
    for number, step in enumerate(steps):
        lines.append(f"printf '\\n{STEP_MARK.format(number)}\\n'")
        lines.append(step.command)
    return "\n".join(lines) + "\n"


def step_outputs(stdout: str, count: int) -> list[list[str]]:
    """Each step's output lines, split at the marks the script printed."""
    parts = re.split(r"\n@@tour-step (\d+)@@\n", "\n" + stdout)
    outputs: list[list[str]] = [[] for _ in range(count)]
    for number, text in zip(parts[1::2], parts[2::2], strict=True):
        outputs[int(number)] = [line.rstrip("\r") for line in text.splitlines() if line.strip()]
    return outputs


def pattern(expected: str) -> re.Pattern[str]:
    """An expected line as a regular expression: literal text, `...` for anything."""
    return re.compile(".*?".join(re.escape(part) for part in expected.split("...")))


def mismatches(step: Step, output: list[str]) -> list[str]:
    """The expected lines that the output lacks, in order: one line may satisfy one pattern."""
    missing = []
    remaining = iter(output)
    for expected in step.expected:
        wanted = pattern(expected)
        if not any(wanted.fullmatch(line.rstrip()) for line in remaining):
            missing.append(expected)
            remaining = iter(output)
    return missing


def test_the_parser_reads_commands_expectations_and_continuations() -> None:
    block = (
        "eval x    # a note\n"
        "# a comment line, not output\n"
        "curl a \\\n"
        "  -d b\n"
        '#  {"ok":...}\n'
        "#  second\n"
        "quotagate status\n"
    )
    steps = parse_steps(block)
    assert [s.command for s in steps] == [
        "eval x    # a note",
        "curl a \\\n  -d b",
        "quotagate status",
    ]
    assert [s.expected for s in steps] == [[], ['{"ok":...}', "second"], []]


def test_a_wrong_or_missing_line_of_output_is_reported() -> None:
    step = Step("curl", ['{"balance":...,"durable":true}', "x-quota-cost: 1"])
    assert mismatches(step, ['{"balance":1500,"durable":true}', "x-quota-cost: 1"]) == []
    assert mismatches(step, ['{"balance":1500,"durable":false}', "x-quota-cost: 1"]) == [
        '{"balance":...,"durable":true}'
    ]
    assert mismatches(step, ["x-quota-cost: 1", '{"balance":1,"durable":true}']) == [
        "x-quota-cost: 1"
    ]
    assert mismatches(step, []) == step.expected
    # A pattern matches the whole line, not a piece of it.
    assert mismatches(Step("c", ["cost: 1"]), ["x-quota-cost: 12"]) == ["cost: 1"]


def test_the_tour_covers_each_part_of_the_product() -> None:
    steps = [s for b in tour_blocks((ROOT / "README.md").read_text()) for s in parse_steps(b)]
    commands = "\n".join(s.command for s in steps)
    assert [name for name, part in TOUR_COVERS.items() if part not in commands] == []
    assert sum("Idempotency-Key: req-1" in s.command for s in steps) == 2, "the replay"
    assert sum(len(s.expected) for s in steps) >= 15


@pytest.fixture
def work() -> Iterator[Path]:
    # Not pytest's tmp_path: PostgreSQL runs as `nobody` under root, and must enter it.
    path = Path(tempfile.mkdtemp(prefix="qg-tour-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(shutil.which("jq") is None, reason="the tour uses jq, not on the PATH")
@pytest.mark.skipif(shutil.which("curl") is None, reason="the tour uses curl, not on the PATH")
def test_the_readme_tour_runs_as_written_against_quotagate_up(work: Path) -> None:
    steps = [s for b in tour_blocks((ROOT / "README.md").read_text()) for s in parse_steps(b)]
    data = work / "data"
    with running_up(work, "--port", str(free_port()), "--data-dir", str(data)) as up:
        # The shell of a user who activated the virtualenv: `quotagate` is on the PATH.
        bin_dir = str(Path(sys.executable).parent)
        env = _clean_env(
            QUOTAGATE_DATA_DIR=str(data), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
        )
        script = work / "tour.sh"
        script.write_text(tour_script(steps))
        done = subprocess.run(
            ["bash", "-euo", "pipefail", str(script)], cwd=work, env=env,
            capture_output=True, text=True, timeout=TOUR_TIMEOUT_SECONDS,
        )  # fmt: skip
        outputs = step_outputs(done.stdout, len(steps))
        ran = sum(1 for o in done.stdout.splitlines() if re.fullmatch(r"@@tour-step \d+@@", o))
        assert done.returncode == 0, (
            f"step {ran - 1} failed: {steps[ran - 1].command}\n{done.stderr[-3000:]}"
        )
        assert ran == len(steps)
        wrong = {
            step.command: (missing, outputs[i])
            for i, step in enumerate(steps)
            if (missing := mismatches(step, outputs[i]))
        }
        assert wrong == {}

        # The end state, read past the tour: one charge for the two requests with one
        # Idempotency-Key, the capture and the hook's charge; all of it in the ledger.
        admin = {"Authorization": f"Bearer {up.info['admin_key']}"}
        with httpx.Client(base_url=up.info["url"], headers=admin, timeout=10) as http:
            alice = http.get("/v1/accounts/alice").json()
            assert (alice["balance"], alice["reserved"]) == (1476, 0)
            rows = http.get("/v1/accounts/alice/transactions", params={"limit": 20}).json()
        amounts = [(t["type"], t["amount"], t["pending"]) for t in rows["transactions"]]
        assert amounts == [
            ("spend", -1, False),
            ("spend", -20, False),
            ("spend", -3, False),
            ("grant", 500, False),
            ("grant", 1000, False),
        ]
        keys = subprocess.run(
            [sys.executable, "-m", "quotagate.cli.main", "keys", "list", "--json"],
            env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert '"billing"' in keys.stdout
