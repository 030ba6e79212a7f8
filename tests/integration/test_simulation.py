"""The fault simulation, short: a few seeds of a few hundred steps, every fault included; and
proof that its checks see a balance changed behind the model's back."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from tests.simulation import ops
from tests.simulation.cluster import PREFIX
from tests.simulation.runner import replay_command, run_seed
from tests.simulation.world import FAULT_MIX, Options, World


def test_a_short_seeded_run_keeps_every_acknowledged_answer() -> None:
    options = Options(seed=12, steps=150, fault_rate=0.08, checkpoint_every=75, workers=1)
    options.fault_mix = dict.fromkeys(FAULT_MIX, 1)  # each fault as likely as the others
    outcome = asyncio.run(run_seed(options))
    assert outcome.passed, outcome.summary
    faults = {name for name in FAULT_MIX if outcome.stats[name]}
    assert len(faults) >= 4, f"only {faults} happened: {outcome.summary}"
    assert outcome.stats["checkpoints"] == 150 // 75 + 1


def test_a_balance_changed_behind_the_model_fails_the_run_with_its_replay_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A charge that Redis applies twice is what the checks are for: here one consume adds a
    second decrement straight into Redis, and the run must stop at that very step."""
    original = ops.consume
    tampered_steps: list[int] = []

    async def consume_then_tamper(world: World) -> list[str]:
        touched = await original(world)
        if not tampered_steps and touched:
            tampered_steps.append(world.step)
            client = aioredis.Redis.from_url(world.cluster.redis.url)
            key = world.engine.keys.account(touched[0]).account
            assert key.startswith(f"{PREFIX}:")
            await client.hincrby(key, "b", -1)
            await client.aclose()
        return touched

    monkeypatch.setitem(ops.OPERATIONS, "consume", consume_then_tamper)
    options = Options(seed=5, steps=40, fault_rate=0.0, checkpoint_every=1000, workers=1)
    outcome = asyncio.run(run_seed(options))
    kept = re.search(r"process logs kept in (\S+);", outcome.summary)
    assert kept is not None and Path(kept[1], "redis.log").is_file()
    shutil.rmtree(kept[1])
    assert not outcome.passed
    assert f"FAILED at step {tampered_steps[0]}:" in outcome.summary
    assert "Redis has, model expects: {'balance'" in outcome.summary
    assert replay_command(options) in outcome.summary
    assert replay_command(options).startswith("scripts/simulate --seed 5 --steps 40 ")
