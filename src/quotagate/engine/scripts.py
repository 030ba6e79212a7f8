"""The Lua scripts: read from the package once (``quotagate/lua/*.lua``), named by their SHA1
for EVALSHA. Running them, batched, is :mod:`quotagate.engine.batching`'s work; on a cluster,
routing each call to its master is :mod:`quotagate.engine.routing`'s.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from quotagate.engine.script_files import script_source

SCRIPT_NAMES = (
    "consume",
    "check",
    "credit",
    "hold",
    "capture",
    "release",
    "settle",
    "expire_holds",
    "grant",
    "void_grant",
    "expire_grants",
    "upsert_account",
    "renew",
    "restore",
    "set_pool_usage",
    "lease",
    "shadow",
)
"""Every script of the package's ``lua/`` folder (``prelude.lua`` is joined to each)."""

COMBINING = frozenset({"consume"})
"""Scripts that take the arguments of several calls at once (the charges of one account:
one read and one write of the account for all of them, about half the Redis time a charge)."""


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str
    combines: bool = False
    """Takes several calls' arguments at once, one after the other (see COMBINING)."""


def load_scripts() -> dict[str, Script]:
    """Read every script shipped in the package (``quotagate/lua/*.lua``), each with the
    prelude joined to its front (see :mod:`quotagate.engine.script_files`)."""
    scripts = {}
    for name in SCRIPT_NAMES:
        source = script_source(name)
        sha = hashlib.sha1(source.encode()).hexdigest()
        scripts[name] = Script(name, source, sha, combines=name in COMBINING)
    return scripts
