"""One copy of each rule: the scripts use the prelude's helpers and never copy one by hand.

Each check is one a hand copy trips: a script that defines a name the prelude defines; a
script that holds a line of a rule only the prelude may hold (the clock, the idempotency
record, the hold expiry, the rate-limit state, the outbox append, the integer and id checks);
a run of lines a script shares with the prelude; and a run of lines two scripts share that is
their own work rather than calls of the prelude's helpers (what pasting a block leaves).
"""

from __future__ import annotations

import re
from collections import defaultdict

import pytest

from quotagate.engine.script_files import PRELUDE, script_text
from quotagate.engine.scripts import SCRIPT_NAMES

RULES = {
    "the clock": r"redis\.call\('TIME'\)",
    "the idempotency record": r"KEYS\[4\]",
    "the partition's ready flag": r"'ready'",
    "a tier's cfg entry": r"'t:'",
    "hold expiry": r"ZRANGEBYSCORE|'ZRANGE', KEYS\[6\]",
    "a hold's fields": r"\(%d\+\)\|",
    "the rate-limit state": r"KEYS\[8\]",
    "the outbox append": r"'XADD'",
    "an integer check": r"%-\?\[1-9\]%d\*",
    "an id's length": r"#\w+ [<>]=? ?(1|64)\b",
    "a period check": r"%d%d%d%d",
    "a fingerprint's length": r"\b16\b",
}
"""What only the prelude may say, by what it says in Lua."""

RUN = 3
"""Consecutive significant lines two files may not share."""


def _code(text: str) -> list[str]:
    """The lines of a script after its header, without comments, blank lines and the short
    lines any two blocks share (``end``, ``else``, ``return reply``...)."""
    body = text.split("]]", 1)[1] if text.startswith("--[[") else text
    lines = []
    for line in body.splitlines():
        line = re.sub(r"\s+", " ", line.split("--", 1)[0]).strip()
        if len(line) >= 16:
            lines.append(line)
    return lines


def _defined(lines: list[str]) -> set[str]:
    names = set()
    for line in lines:
        found = re.match(r"local (?:function )?([\w, ]+?)\s*(?:=|\()", line)
        function_or_constant = line.startswith("local function") or re.match(
            r"local [A-Z_]+ =", line
        )
        if found and function_or_constant:
            names.add(found.group(1))
    return names


PRELUDE_CODE = _code(script_text(PRELUDE))
SCRIPTS = {name: _code(script_text(name)) for name in SCRIPT_NAMES}


def test_the_prelude_defines_the_shared_rules() -> None:
    assert {"int_arg", "id_arg", "ttl_arg", "replay", "remember", "expire_due", "tier_rate",
            "append_transaction", "MAX_AMOUNT", "MAX_ID_LENGTH"} <= _defined(PRELUDE_CODE)  # fmt: skip


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_no_script_defines_again_what_the_prelude_defines(name: str) -> None:
    assert _defined(SCRIPTS[name]) & _defined(PRELUDE_CODE) == set()


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_no_script_holds_a_rule_of_the_prelude(name: str) -> None:
    found = [
        (rule, line)
        for line in SCRIPTS[name]
        for rule, pattern in RULES.items()
        if re.search(pattern, line)
    ]
    assert found == []


def test_every_rule_is_in_the_prelude() -> None:
    missing = [
        rule
        for rule, pattern in RULES.items()
        if not any(re.search(pattern, line) for line in PRELUDE_CODE)
    ]
    assert missing == []


def _runs(lines: list[str]) -> set[tuple[str, ...]]:
    return {tuple(lines[i : i + RUN]) for i in range(len(lines) - RUN + 1)}


def _logic(lines: list[str]) -> list[str]:
    """The lines that do a script's own work: not a call of a prelude helper, not a one-line
    early return (scripts call the same helpers in the same order and pass on their refusals
    the same way, which is the point)."""
    functions = [n for n in _defined(PRELUDE_CODE) if not n.isupper()]
    helpers = re.compile(r"\b(" + "|".join(sorted(functions)) + r")\b")
    refusal = re.compile(r"^if .* then return .* end$")
    return [line for line in lines if not helpers.search(line) and not refusal.match(line)]


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_no_script_holds_a_run_of_the_preludes_lines(name: str) -> None:
    assert _runs(SCRIPTS[name]) & _runs(PRELUDE_CODE) == set()


def test_no_two_scripts_share_a_run_of_their_own_work() -> None:
    where: defaultdict[tuple[str, ...], set[str]] = defaultdict(set)
    for name, lines in SCRIPTS.items():
        for run in _runs(_logic(lines)):
            where[run].add(name)
    shared = {run: sorted(names) for run, names in where.items() if len(names) > 1}
    assert shared == {}


def _pasted(function: str, lines: int) -> list[str]:
    start = next(i for i, line in enumerate(PRELUDE_CODE) if f"local function {function}(" in line)
    return PRELUDE_CODE[start : start + lines]


def test_the_checks_see_a_hand_copy() -> None:
    """Helpers of the prelude pasted into a script: each check above would report them."""
    replay = _pasted("replay", 8)
    assert _defined(replay) & _defined(PRELUDE_CODE) == {"replay"}
    assert any(re.search(RULES["the idempotency record"], line) for line in replay)
    assert _runs(replay) and _runs(replay) <= _runs(PRELUDE_CODE)
    # The body of a copy, renamed and pasted into two scripts, is work they share.
    body = _pasted("due_release_credits", 8)[1:]
    assert any(re.search(RULES["hold expiry"], line) for line in body)
    assert len(_runs(_logic(body))) >= 2
