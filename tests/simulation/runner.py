"""Run seeds: start a private cluster, drive it step by step, check, report, clean up.

    python -m tests.simulation --seeds 1-20 --steps 2000
    python -m tests.simulation --minutes 30             # seeds 1, 2, ... until the time is up
    python -m tests.simulation --seed 7 --steps 400     # replay one seed

Every choice of a run comes from ``random.Random(seed)``; a failing seed prints what differed,
the last steps, and the command that replays it.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
from tests.simulation.calls import Gateways
from tests.simulation.checks import check_accounts, checkpoint
from tests.simulation.cluster import PREFIX, Cluster
from tests.simulation.faults import FAULTS, end_postgres_outage
from tests.simulation.model import Model
from tests.simulation.ops import OPERATIONS, open_account
from tests.simulation.world import Options, World

from quotagate.engine import CreditEngine

FIRST_ACCOUNTS = 6
IDLE_OPERATIONS_WHILE_POSTGRES_DOWN = frozenset({"renew", "renew_again"})
"""Renewal runs as a command that opens the ledger too: it waits for PostgreSQL."""


@dataclass
class Outcome:
    seed: int
    passed: bool
    seconds: float
    summary: str
    stats: Counter[str]


def replay_command(options: Options) -> str:
    parts = [
        "scripts/simulate", f"--seed {options.seed}", f"--steps {options.steps}",
        f"--fault-rate {options.fault_rate}", f"--checkpoint-every {options.checkpoint_every}",
        f"--gateways {options.gateways}", f"--workers {options.workers}",
        f"--refunds {options.refunds}",
    ]  # fmt: skip
    if not options.idempotency_after_recovery:
        parts.append("--no-idempotency-after-recovery")
    return " ".join(parts)


async def named_refunds_supported(url: str) -> bool:
    """Whether the gateway's refunds take ``refund_of`` (its OpenAPI document says)."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        document = (await client.get("/openapi.json")).json()
    schema = document.get("components", {}).get("schemas", {}).get("CreditRequest", {})
    return "refund_of" in schema.get("properties", {})


def choose(rng: random.Random, mix: dict[str, int]) -> str:
    names = sorted(mix)
    return rng.choices(names, weights=[mix[n] for n in names])[0]


async def one_step(world: World) -> None:
    options = world.options
    if world.postgres_down_until is not None and world.step >= world.postgres_down_until:
        await end_postgres_outage(world)
    if world.rng.random() < options.fault_rate:
        name = choose(world.rng, options.fault_mix)
        touched = await FAULTS[name](world)
        world.stats[name] += 1
    else:
        name = choose(world.rng, options.op_mix)
        if world.postgres_down and name in IDLE_OPERATIONS_WHILE_POSTGRES_DOWN:
            name = "consume"
        touched = await OPERATIONS[name](world)
        world.stats[name] += 1
    await check_accounts(world, touched)
    check_processes(world)
    if world.step % options.checkpoint_every == 0:
        await final_checkpoint(world)


def check_processes(world: World) -> None:
    """A gateway that stopped is a failure; so is a worker that died without being killed."""
    dead = world.cluster.dead_processes()
    world.expect(not dead, "processes stopped on their own:\n" + "\n".join(dead))


async def final_checkpoint(world: World) -> None:
    if world.postgres_down:
        await end_postgres_outage(world)
    await checkpoint(world)
    world.stats["checkpoints"] += 1


async def drive(world: World) -> None:
    for _ in range(FIRST_ACCOUNTS):
        await open_account(world)
    for step in range(1, world.options.steps + 1):
        world.step = step
        await one_step(world)
    world.step += 1
    await final_checkpoint(world)


async def run_seed(options: Options) -> Outcome:
    started = time.monotonic()
    cluster = Cluster(gateways=options.gateways, workers=options.workers)
    engine: CreditEngine | None = None
    gateways: Gateways | None = None
    world: World | None = None
    try:
        await asyncio.to_thread(cluster.start)
        engine = CreditEngine.from_url(cluster.redis.url, cluster.config, prefix=PREFIX)
        await engine.initialize(allow_fresh=False)
        gateways = Gateways(cluster.gateway_urls, cluster.keys)
        world = World(options, random.Random(options.seed), Model(), cluster, gateways, engine)
        world.named_refunds = options.refunds == "named" or (
            options.refunds == "auto" and await named_refunds_supported(cluster.gateway_urls[0])
        )
        await drive(world)
        stats = ", ".join(f"{k} {v}" for k, v in sorted(world.stats.items()))
        lost = (
            f"; {len(world.model.lost)} acknowledged spends lost by design"
            if world.model.lost
            else ""
        )
        summary = f"seed {options.seed}: passed {options.steps} steps ({stats}){lost}"
        return Outcome(options.seed, True, time.monotonic() - started, summary, world.stats)
    except AssertionError as failure:
        step = world.step if world else 0
        last = "\n  ".join(world.history) if world else ""
        summary = (
            f"seed {options.seed} FAILED at step {step}: {failure}\n"
            f"last steps:\n  {last}\nprocess logs kept in {keep_logs(cluster)}; replay with:\n"
            f"  {replay_command(options)}"
        )
        counts = world.stats if world else Counter[str]()
        return Outcome(options.seed, False, time.monotonic() - started, summary, counts)
    finally:
        if gateways is not None:
            await gateways.aclose()
        if engine is not None:
            await engine.aclose()
        await asyncio.to_thread(cluster.close)


def keep_logs(cluster: Cluster) -> str:
    """Copy the gateways', workers' and Redis's logs out of the run's directory (removed
    next) into one that stays, for reading after a failure."""
    kept = Path(tempfile.mkdtemp(prefix="qg-sim-failed-"))
    for log in cluster.dir.rglob("*.log"):
        shutil.copy(log, kept / log.name)
    return str(kept)


def parse_seeds(text: str) -> list[int]:
    """ "7", "1-20" or "1,4,9"."""
    seeds: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        seeds += range(int(low), int(high or low) + 1)
    return seeds


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/simulate", description=__doc__.split("\n")[0])
    parser.add_argument("--seed", dest="seeds", help="one seed (same as --seeds)")
    parser.add_argument("--seeds", dest="seeds", help='"7", "1-20" or "1,4,9" [1]')
    parser.add_argument("--minutes", type=float, help="run seeds from the first one until then")
    parser.add_argument("--steps", type=int, default=2000, help="steps per seed [2000]")
    parser.add_argument("--fault-rate", type=float, default=0.03, help="share of faults [0.03]")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="steps [100]")
    parser.add_argument("--gateways", type=int, default=2, choices=(1, 2, 3))
    parser.add_argument("--workers", type=int, default=2, choices=(1, 2, 3))
    parser.add_argument("--refunds", choices=("auto", "named", "plain"), default="auto")
    parser.add_argument(
        "--idempotency-after-recovery", action=argparse.BooleanOptionalAction, default=True,
        help="retry keys from before a FLUSHALL and recovery, and expect their first answers "
        "(on by default)",
    )  # fmt: skip
    return parser.parse_args(argv)


def options_for(args: argparse.Namespace, seed: int) -> Options:
    return Options(
        seed=seed, steps=args.steps, fault_rate=args.fault_rate,
        checkpoint_every=args.checkpoint_every, gateways=args.gateways, workers=args.workers,
        refunds=args.refunds, idempotency_after_recovery=args.idempotency_after_recovery,
    )  # fmt: skip


async def run(args: argparse.Namespace) -> list[Outcome]:
    seeds = parse_seeds(args.seeds or "1")
    deadline = time.monotonic() + args.minutes * 60 if args.minutes else None
    outcomes: list[Outcome] = []
    seed = seeds[0]
    while True:
        outcome = await run_seed(options_for(args, seed))
        outcomes.append(outcome)
        print(f"{outcome.summary} [{outcome.seconds:.1f} s]", flush=True)
        if deadline is not None:
            if time.monotonic() >= deadline:
                return outcomes
            seed += 1
        elif len(outcomes) == len(seeds):
            return outcomes
        else:
            seed = seeds[len(outcomes)]


def _stop_on_sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        outcomes = asyncio.run(run(args))
    except KeyboardInterrupt:
        print("stopped; every process and directory of the run was cleaned up", file=sys.stderr)
        return 130
    failed = [o.seed for o in outcomes if not o.passed]
    print(f"{len(outcomes) - len(failed)} of {len(outcomes)} seeds passed"
          + (f"; failed: {failed}" if failed else ""))  # fmt: skip
    return 1 if failed else 0
