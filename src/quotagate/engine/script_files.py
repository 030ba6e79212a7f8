"""The Lua scripts' text as Redis runs it: the shared prelude, then the script.

Every script ships as a file of the package's ``lua/`` folder, beside ``prelude.lua``, which
holds the rules they share (argument checks, the idempotency replay, lazy hold expiry, the
rate limit, the outbox entry's layout): one copy of each. The text Redis loads is the
prelude's followed by the script's, made once when the scripts are read, never per call and
never from input. Line numbers in a script error count from the top of the prelude.
"""

from __future__ import annotations

from importlib import resources

PRELUDE = "prelude"
"""The file (``lua/prelude.lua``) joined to the front of every script."""


def script_text(name: str) -> str:
    """One file of the ``lua/`` folder, as shipped."""
    return (resources.files("quotagate") / "lua" / f"{name}.lua").read_text()


def script_source(name: str) -> str:
    """What Redis runs for script ``name``: the prelude, then the script."""
    return script_text(PRELUDE) + "\n" + script_text(name)
