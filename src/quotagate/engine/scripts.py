"""The Lua scripts: read from the package once (``quotagate/lua/*.lua``) into one Redis
function library (:mod:`quotagate.engine.script_files`), each script a function called by
FCALL. Running them, batched, is :mod:`quotagate.engine.batching`'s work; on a cluster,
routing each call to its master is :mod:`quotagate.engine.routing`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from quotagate.engine.script_files import function_name, library_source
from quotagate.errors import RedisWithoutFunctions

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
class Library:
    """The function library that holds every script: what ``FUNCTION LOAD`` is given."""

    name: str
    source: str


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    function: str
    """The library's function that runs it: what FCALL names."""
    library: Library
    combines: bool = False
    """Takes several calls' arguments at once, one after the other (see COMBINING)."""

    def command(self, keys: Sequence[str], args: Sequence[str]) -> tuple[Any, ...]:
        """The FCALL of this script with ``keys`` and ``args``, as command arguments."""
        return ("FCALL", self.function, len(keys), *keys, *args)


MISSING = "Function not found"
"""What Redis answers FCALL of a function it does not hold (a restart without persistence,
FUNCTION FLUSH, a master new to a cluster): the library is loaded, and the call sent again."""

ALREADY_LOADED = "already exists"
"""What FUNCTION LOAD answers for a library Redis holds: another process loaded it first."""


def is_missing(error: BaseException | str) -> bool:
    """Whether an error reply (its text, or redis-py's exception) says the function is not
    loaded. redis-py drops the reply's first word (ERR); hiredis keeps it."""
    return MISSING in str(error)


async def load_library(redis: Redis, library: Library) -> None:
    """FUNCTION LOAD the library on one server; one it already holds is left as it is (the
    name is its text's digest: the same name is the same text). A server without functions
    is RedisWithoutFunctions, in one sentence, not a failed script."""
    try:
        await redis.function_load(library.source)
    except redis_errors.ResponseError as exc:
        if "unknown command" in str(exc).lower():
            raise RedisWithoutFunctions(
                f"Redis does not know FUNCTION LOAD ({exc}): quotagate runs its scripts as "
                "Redis functions and needs Redis 7.0 or newer, or Valkey 7.2 or newer"
            ) from exc
        if ALREADY_LOADED not in str(exc):
            raise


def load_scripts() -> dict[str, Script]:
    """Every script shipped in the package (``quotagate/lua/*.lua``), each a function of one
    library with the prelude at its top (see :mod:`quotagate.engine.script_files`)."""
    name, source = library_source(SCRIPT_NAMES)
    library = Library(name, source)
    return {
        script: Script(script, function_name(name, script), library, script in COMBINING)
        for script in SCRIPT_NAMES
    }
