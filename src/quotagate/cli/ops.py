"""`quotagate renew | reconcile | recover | expire-holds`: the operations, run in place.

Each is also an RQ job (quotagate.jobs.*) that the scheduler enqueues; these commands run the
same code here and now, with a progress bar for people and ``--json`` for scripts. Exit
statuses are those of quotagate.cli.failures.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from typing import Any

import click

from quotagate.cli.backends import Backends, run
from quotagate.cli.failures import EXIT_REFUSED
from quotagate.cli.ops_support import EXIT_DRIFT, fail, json_option, progress
from quotagate.cli.output import emit_json, table
from quotagate.engine import current_period
from quotagate.errors import RecoveryRefused, ValidationError
from quotagate.jobs.expire import expire_all_async
from quotagate.jobs.reconcile import Drift, Report, reconcile_async
from quotagate.jobs.recover import ledger_account_count, recover_async
from quotagate.jobs.renew import RenewTally, check_period, renew_all_async
from quotagate.jobs.repair import Repair, repair_account
from quotagate.settings import Settings


@click.command()
@click.option("--period", help="Calendar month to renew, YYYY-MM (UTC) [default: this one].")
@click.option("--enqueue", is_flag=True, help="Hand one job per partition to the workers.")
@json_option
def renew(period: str | None, enqueue: bool, as_json: bool) -> None:
    """Monthly renewal: every active account gets its tier's grant once per period.

    Safe to run again: accounts renewed for the period are left as they are.
    """
    period = check_period(period or current_period())
    if enqueue:
        from quotagate.jobs.enqueue import enqueue_renewals, partition_count

        job_ids = enqueue_renewals(list(range(partition_count())), period)
        if as_json:
            emit_json({"period": period, "jobs": job_ids})
        else:
            click.echo(f"enqueued {len(job_ids)} renewal jobs for {period}")
        return

    async def work(b: Backends) -> RenewTally:
        engine = b.engine
        with progress(engine.config.partitions, f"renewing {period}", hidden=as_json) as bar:
            return await renew_all_async(engine, period, on_partition=lambda _p, _t: bar.advance())

    tally = run(work, ledger=None)
    if as_json:
        emit_json({"period": period, **asdict(tally)})
        return
    click.echo(
        f"{period}: {tally.renewed} renewed, {tally.already_renewed} already renewed, "
        f"{tally.banned} banned (nothing given), {tally.skipped} skipped; "
        f"{tally.granted} credits granted, {tally.expired} expired"
    )


def check_partitions(wanted: list[int]) -> None:
    count = Settings.from_env().load_config().partitions
    if not all(0 <= p < count for p in wanted):
        raise ValidationError(f"--partition must be from 0 to {count - 1}")


def _drift_rows(drifts: list[Drift]) -> list[dict[str, Any]]:
    return [
        {
            "account": d.account_id,
            "check": f"grant {d.grant_id}" if d.grant_id else d.check,
            "expected": d.expected,
            "found": d.found,
            "difference": d.difference,
            "likely cause": d.cause,
        }
        for d in drifts
    ]


def _repair_rows(repairs: list[Repair]) -> list[dict[str, Any]]:
    return [
        {
            "account": r.account_id,
            "action": r.action,
            "amount": r.amount,
            "snapshot before": r.snapshot_before,
            "snapshot after": r.snapshot_after,
            "transaction": r.transaction_id,
            **({"pool usage set": r.pool_usage} if r.pool_usage is not None else {}),
        }
        for r in repairs
    ]


@click.command()
@click.option(
    "--repair",
    "do_repair",
    is_flag=True,
    help="Balance the books: an adjust row in the ledger per drifting account.",
)
@click.option("--partition", "partitions", type=int, multiple=True,
              help="Only this partition (repeat for several) [default: all].")  # fmt: skip
@json_option
def reconcile(do_repair: bool, partitions: tuple[int, ...], as_json: bool) -> None:
    """Check that Redis and the ledger agree for every account; exit 1 when they do not.

    Per account: the Redis balance against the snapshot plus the outbox entries not yet in
    the ledger, and the snapshot against the sum of the ledger rows. --repair writes an
    adjust transaction for each difference (Redis's balance is kept) and checks again.
    """

    async def work(b: Backends) -> tuple[Report, list[Repair], Report | None]:
        engine, ledger = b.engine, b.ledger
        assert ledger is not None
        count = len(wanted) if wanted else engine.config.partitions
        with progress(count, "reconciling", hidden=as_json) as bar:
            report = await reconcile_async(
                engine, ledger, partitions=wanted, on_partition=lambda _p, _r: bar.advance()
            )
        if not do_repair or report.balanced:
            return report, [], None
        repairs = []
        for account_id in sorted({d.account_id for d in report.drifts}):
            found = [d for d in report.drifts if d.account_id == account_id]
            repairs.append(await repair_account(engine, ledger, account_id, found))
        after = await reconcile_async(engine, ledger, partitions=wanted)
        return report, repairs, after

    wanted = sorted(set(partitions)) or None
    if wanted:
        check_partitions(wanted)
    report, repairs, after = run(work)
    final = after or report
    if as_json:
        out: dict[str, Any] = report.to_dict()
        if do_repair:
            out["repairs"] = [asdict(r) for r in repairs]
            out["after_repair"] = final.to_dict()
        emit_json(out)
    else:
        _print_reconciliation(report, repairs, after)
    if not final.balanced:
        sys.exit(EXIT_DRIFT)


def _print_reconciliation(report: Report, repairs: list[Repair], after: Report | None) -> None:
    if report.balanced:
        accounts = "1 account" if report.accounts == 1 else f"{report.accounts} accounts"
        click.echo(f"the books balance: {accounts} checked, no drift")
        return
    click.echo(table(_drift_rows(report.drifts)))
    click.echo(f"\n{len(report.drifts)} drifts over {report.accounts} accounts")
    if after is None:
        click.echo("run `quotagate reconcile --repair` to balance them with adjust rows")
        return
    click.echo("\nrepairs:\n" + table(_repair_rows(repairs)))
    if after.balanced:
        click.echo("\nthe books balance now")
    else:
        click.echo("\nstill drifting after the repair:\n" + table(_drift_rows(after.drifts)))


@click.command()
@click.option(
    "--force",
    is_flag=True,
    help="Recover although the outboxes hold entries; accounts Redis has are kept.",
)
@json_option
def recover(force: bool, as_json: bool) -> None:
    """Rebuild Redis from the ledger after Redis lost its data, then open it for charges.

    Until then, a charge to an account Redis lacks is refused (account_not_loaded). Refused
    (exit 4) while the outboxes still hold entries: run `quotagate flush` first.
    """

    async def work(b: Backends) -> dict[str, Any]:
        assert b.ledger is not None
        total = await ledger_account_count(b.ledger)
        with progress(total, "restoring accounts", hidden=as_json) as bar:
            tally = await recover_async(b.engine, b.ledger, force=force, on_batch=bar.advance)
        return asdict(tally)

    try:
        result = run(work)
    except RecoveryRefused as exc:
        fail(exc.detail, EXIT_REFUSED)
        return
    if as_json:
        emit_json(result)
        return
    click.echo(
        f"restored {result['restored']} of {result['ledger_accounts']} accounts from the ledger "
        f"({result['already_present']} were still in Redis); "
        f"{result['partitions_opened']} partitions open for charges"
    )


@click.command("expire-holds")
@json_option
def expire_holds(as_json: bool) -> None:
    """End every hold past its deadline now, by its policy, and expire every grant past its
    expiry (the scheduler does both every few seconds)."""

    async def work(b: Backends) -> dict[str, int]:
        tally = await expire_all_async(b.engine)
        return asdict(tally)

    result = run(work, ledger=None)
    if as_json:
        emit_json(result)
    else:
        click.echo(
            f"ended {result['holds']} expired holds ({result['credits']} credits released, "
            f"{result['captured']} captured); expired {result['grants']} grants "
            f"({result['grant_credits']} credits)"
        )


def register(cli: click.Group) -> None:
    for command in (renew, reconcile, recover, expire_holds):
        cli.add_command(command)
