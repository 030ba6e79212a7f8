"""The Lua scripts' text as Redis runs it: one function library of every script, with the
prelude's helpers defined once at its top.

Every script ships as a file of the package's ``lua/`` folder, beside ``prelude.lua``, which
holds the rules they share (argument checks, the idempotency replay, lazy hold expiry, the
rate limit, the outbox entry's layout): one copy of each. The text Redis loads is made once,
when the scripts are read, never per call and never from input.

The scripts run as Redis functions (``FUNCTION LOAD``, then ``FCALL``), not by EVALSHA,
because Redis runs an EVAL script's whole text at every call: each ``local function`` of the
prelude made a closure then, which cost a seventh of a charge's Redis instructions (about
30,000 of 210,000, measured with callgrind). A library's top level runs once, when it is
loaded: the prelude's helpers are made there, and each script is a function of the library
that Redis calls with its keys and arguments. The library's name and its functions' names
carry a digest of its text, so that two versions of quotagate on one Redis (a rolling
upgrade) each call their own.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

PRELUDE = "prelude"
"""The file (``lua/prelude.lua``) whose definitions are joined to the front of the scripts."""

_DEFINITION = re.compile(r"^local (?:function )?([A-Za-z_][A-Za-z0-9_]*)\b")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class Definition:
    """One top-level ``local`` of the prelude, with the comment lines above it."""

    name: str
    text: str


def script_text(name: str) -> str:
    """One file of the ``lua/`` folder, as shipped."""
    return (resources.files("quotagate") / "lua" / f"{name}.lua").read_text()


@cache
def prelude_definitions() -> tuple[Definition, ...]:
    """The prelude's definitions in order: each starts at its comment lines (or its ``local``
    line) and runs to the next one. The opening ``--[[ ]]`` comment is not part of any."""
    text = script_text(PRELUDE)
    body = text.split("]]", 1)[1] if text.startswith("--[[") else text
    definitions: list[Definition] = []
    pending: list[str] = []  # comment lines waiting for the definition they describe
    current: tuple[str, list[str]] | None = None
    for line in body.splitlines():
        found = _DEFINITION.match(line)
        if found:
            if current is not None:
                definitions.append(Definition(current[0], "\n".join(current[1]).strip() + "\n"))
            current, pending = (found.group(1), [*pending, line]), []
        elif current is None or _closed(current[1]):
            if line.strip():  # a comment above the next definition (blank lines go)
                pending.append(line)
        elif current is not None:
            current[1].extend([*pending, line])
            pending = []
    if current is not None:
        definitions.append(Definition(current[0], "\n".join(current[1]).strip() + "\n"))
    return tuple(definitions)


def _closed(lines: list[str]) -> bool:
    """True when a definition's last line ends it: a function's ``end`` at the start of a
    line, a one-line function, or a one-line constant."""
    last = lines[-1]
    if last == "end":
        return True
    if last.startswith("local function"):
        return last.endswith(" end")
    return last.startswith("local ")


def used_definitions(text: str) -> list[Definition]:
    """The prelude definitions ``text`` names, with those they name, in the prelude's order."""
    definitions = prelude_definitions()
    by_name = {d.name: d for d in definitions}
    wanted: set[str] = set()
    todo = [n for n in _NAME.findall(_code(text)) if n in by_name]
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(n for n in _NAME.findall(_code(by_name[name].text)) if n in by_name)
    return [d for d in definitions if d.name in wanted]


def _code(text: str) -> str:
    """Lua text without its comments (a helper named only in a comment is not used)."""
    text = re.sub(r"--\[\[.*?\]\]", "", text, flags=re.DOTALL)
    return re.sub(r"--[^\n]*", "", text)


LIBRARY_PREFIX = "quotagate_"
"""Every library quotagate loads is named this and the digest of its text."""


def library_source(names: Sequence[str]) -> tuple[str, str]:
    """The function library of the scripts ``names``: its name and its text. ``KEYS`` and
    ``ARGV`` are locals of the library, set at each call, so that the scripts and the prelude
    read them as they would in an EVAL script; each script's text is the body of a function
    of the library (``script_<name>``), registered as ``<library>_<name>``."""
    texts = {name: script_text(name) for name in names}
    used = {d.name for text in texts.values() for d in used_definitions(text)}
    body = ["local KEYS, ARGV"]
    body += [d.text for d in prelude_definitions() if d.name in used]
    for name, text in texts.items():
        body.append(f"local function script_{name}()\n{text}\nend\n")
    joined = "\n".join(body)
    library = LIBRARY_PREFIX + hashlib.sha1(joined.encode()).hexdigest()[:16]
    registrations = [
        f"redis.register_function('{function_name(library, name)}', function(keys, args)\n"
        f"  KEYS, ARGV = keys, args\n  return script_{name}()\nend)"
        for name in names
    ]
    return library, f"#!lua name={library}\n" + joined + "\n" + "\n".join(registrations) + "\n"


def function_name(library: str, script: str) -> str:
    """What FCALL names script ``script`` of ``library`` by."""
    return f"{library}_{script}"
