"""Scripts ship in the package as one function library, run by FCALL, and load themselves again
after FUNCTION FLUSH or a restart."""

from __future__ import annotations

import asyncio
import re
from importlib import resources

import pytest
from tests.conftest import EngineFactory
from tests.engine.configs import PLAIN
from tests.support.servers import RedisProcess, redis_process

from quotagate.engine.script_files import (
    PRELUDE,
    prelude_definitions,
    script_text,
    used_definitions,
)
from quotagate.engine.scripts import SCRIPT_NAMES, load_scripts
from quotagate.errors import BackendUnavailable, RedisWithoutFunctions


def test_every_script_ships_in_the_package_with_a_header() -> None:
    folder = resources.files("quotagate") / "lua"
    shipped = sorted(p.name for p in folder.iterdir() if p.name.endswith(".lua"))
    assert shipped == sorted(f"{n}.lua" for n in (*SCRIPT_NAMES, PRELUDE))
    scripts = load_scripts()
    (library,) = {s.library for s in scripts.values()}
    for script in scripts.values():
        # Each script whole, as the body of its function, and each prelude helper it names
        # once, at the library's top, before every script.
        assert f"local function script_{script.name}()\n{script_text(script.name)}\nend\n" in (
            library.source
        )
        first_script = library.source.index("local function script_")
        for d in used_definitions(script_text(script.name)):
            assert library.source.count(d.text) == 1 and library.source.index(d.text) < first_script
        assert f"redis.register_function('{script.function}'," in library.source
        assert script.function == f"{library.name}_{script.name}"
        header, body = script_text(script.name).split("]]", 1)
        used_keys = {int(n) for n in re.findall(r"KEYS\[(\d+)\]", body)}
        used_args = {int(n) for n in re.findall(r"ARGV\[(\d+)\]", body)}
        for n in used_keys:
            assert re.search(rf"KEYS\[(\d+\.\.)?{n}\]|KEYS\[\d+\.\.\d+\]", header), (script.name, n)
        for n in used_args:
            assert f"ARGV[{n}]" in header, (script.name, n)
        assert "Reply" in header, script.name


def test_a_script_gets_the_prelude_definitions_it_names_and_no_others() -> None:
    names = [d.name for d in prelude_definitions()]
    assert len(names) == len(set(names)) and {"replay", "expire_due", "tier_rate"} <= set(names)
    # Every definition is the prelude's text, whole: joined, they are the prelude's code.
    body = script_text(PRELUDE).split("]]", 1)[1]
    code = [line for line in body.splitlines() if line.strip()]
    assert [line for d in prelude_definitions() for line in d.text.splitlines()] == code
    lease = {d.name for d in used_definitions(script_text("lease"))}
    # ttl_arg, and what it names: int_arg and the texts it already parsed
    assert lease == {
        "MAX_TTL_MS", "PARSED_TEXTS", "parse_cache", "parsed", "int_texts", "int_arg", "ttl_arg",
    }  # fmt: skip
    consume = {d.name for d in used_definitions(script_text("consume"))}
    assert {"replay", "expire_due", "end_due_holds", "drop_holds", "append_transaction"} <= consume
    assert not consume & {"open_hold", "end_holds", "append_account_event", "period_arg"}
    # A name mentioned only in a comment brings nothing.
    assert used_definitions("-- replay() is not called here\nreturn 1") == []


def test_the_library_is_named_by_its_text() -> None:
    (library,) = {s.library for s in load_scripts().values()}
    assert library.source.startswith(f"#!lua name={library.name}\n")
    assert re.fullmatch(r"quotagate_[0-9a-f]{16}", library.name)
    assert {s.library for s in load_scripts().values()} == {library}  # the same text, the same name


async def test_a_library_loaded_by_another_process_is_loaded_once(
    make_engine: EngineFactory,
) -> None:
    with redis_process() as server:
        first = await make_engine(PLAIN, url=server.url)
        second = await make_engine(PLAIN, url=server.url)  # loads the same library again
        await first.upsert_account("acct")
        await first.credit("acct", 10)
        assert (await second.consume("acct", "unit")).balance == 9
        libraries = await first.redis.function_list()
        names = [_field(lib, "library_name") for lib in libraries]
        assert names == [first.scripts["consume"].library.name]


def _field(entry: list[object], name: str) -> object:
    """A field of FUNCTION LIST's flat [name, value, ...] entry, as text."""
    found = entry[entry.index(name) + 1]
    return found.decode() if isinstance(found, bytes) else found


@pytest.mark.parametrize("batching", [True, False])
async def test_a_concurrent_burst_survives_function_flush(
    make_engine: EngineFactory, batching: bool
) -> None:
    with redis_process() as server:
        engine = await make_engine(PLAIN, url=server.url, batching=batching)
        await engine.upsert_account("acct")
        await engine.credit("acct", 1000)
        for _ in range(3):
            await engine.redis.function_flush()
            results = await asyncio.gather(*(engine.consume("acct", "unit") for _ in range(100)))
            assert len({r.transaction_id for r in results}) == 100
        assert (await engine.get_account("acct")).balance == 700


async def test_redis_down_is_backend_unavailable(make_engine: EngineFactory) -> None:
    with redis_process() as server:
        engine = await make_engine(PLAIN, url=server.url)
        await engine.upsert_account("acct")
        server.stop()
        for batching in (True, False):
            engine.runner.batching = batching
            with pytest.raises(BackendUnavailable):
                await engine.consume("acct", "unit")
            results = await asyncio.gather(
                *(engine.consume("acct", "unit") for _ in range(5)), return_exceptions=True
            )
            assert all(isinstance(r, BackendUnavailable) for r in results)


async def test_texts_parsed_once_give_what_a_first_parse_gives(make_engine: EngineFactory) -> None:
    """The library keeps the integers and rates it parsed (int_texts, rate_texts, number_texts
    in the prelude), at most PARSED_TEXTS of each: past that bound, and on a text seen
    before, a charge answers and writes what it does the first time."""
    with redis_process() as server:
        engine = await make_engine(PLAIN, url=server.url)
        await engine.upsert_account("acct")
        await engine.credit("acct", 5000)
        # Costs of every size from 1 to 1,500 (more distinct texts than the bound), twice.
        costs = [*range(1, 1501), *range(1, 1501)]
        balance = (await engine.get_account("acct")).balance
        for cost in costs:
            if cost > balance:
                await engine.credit("acct", 2 * cost)
                balance += 2 * cost
            result = await engine.consume("acct", "unit", cost)
            balance -= cost
            assert (result.cost, result.balance) == (cost, balance)
        assert (await engine.get_account("acct")).balance == balance
        # A text that is not canonical is refused whether or not its number was seen before.
        keys = engine.keys.script_keys("acct")
        args = ["01a252d4-7224-7014-81bd-7185871f5b25", "acct", "01", "unit", "1", "", "", "",
                "", "1000"]  # fmt: skip
        assert await engine.runner.run(engine.scripts["consume"], keys, args) == [
            "err", "invalid_argument", "cost",
        ]  # fmt: skip


async def test_a_redis_without_functions_is_refused_in_one_sentence(
    make_engine: EngineFactory,
) -> None:
    """A Redis that does not know FUNCTION (older than 7.0; here a real one with the command
    renamed away) is a RedisWithoutFunctions that says what is needed, at start and on a
    call, not a failed script."""
    server = RedisProcess(extra_args=["--rename-command", "FUNCTION", ""])
    server.start()
    try:
        with pytest.raises(RedisWithoutFunctions, match=r"needs Redis 7\.0 or newer"):
            await make_engine(PLAIN, url=server.url)  # initialize() loads the library
    finally:
        server.cleanup()
