"""Scripts ship in the package, run by EVALSHA, and reload themselves after SCRIPT FLUSH."""

from __future__ import annotations

import asyncio
import re
from importlib import resources

import pytest
from tests.conftest import EngineFactory
from tests.engine.configs import PLAIN
from tests.support.servers import redis_process

from quotagate.engine.script_files import (
    PRELUDE,
    prelude_definitions,
    script_text,
    used_definitions,
)
from quotagate.engine.scripts import SCRIPT_NAMES, load_scripts
from quotagate.errors import BackendUnavailable


def test_every_script_ships_in_the_package_with_a_header() -> None:
    folder = resources.files("quotagate") / "lua"
    shipped = sorted(p.name for p in folder.iterdir() if p.name.endswith(".lua"))
    assert shipped == sorted(f"{n}.lua" for n in (*SCRIPT_NAMES, PRELUDE))
    for script in load_scripts().values():
        used = used_definitions(script_text(script.name))
        assert script.source == "".join(d.text for d in used) + "\n" + script_text(script.name)
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
    assert lease == {"MAX_TTL_MS", "int_arg", "ttl_arg"}  # ttl_arg, and what it names
    consume = {d.name for d in used_definitions(script_text("consume"))}
    assert {"replay", "expire_due", "end_due_holds", "drop_holds", "append_transaction"} <= consume
    assert not consume & {"open_hold", "end_holds", "append_account_event", "period_arg"}
    # A name mentioned only in a comment brings nothing.
    assert used_definitions("-- replay() is not called here\nreturn 1") == []


@pytest.mark.parametrize("batching", [True, False])
async def test_a_concurrent_burst_survives_script_flush(
    make_engine: EngineFactory, batching: bool
) -> None:
    with redis_process() as server:
        engine = await make_engine(PLAIN, url=server.url, batching=batching)
        await engine.upsert_account("acct")
        await engine.credit("acct", 1000)
        for _ in range(3):
            await engine.redis.script_flush()
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
