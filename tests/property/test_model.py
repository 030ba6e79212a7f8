"""The reference model against docs/grants.md by hand, without Redis: if the model and the
scripts agreed on a misreading of the doc, the property test would not see it; these would."""

from __future__ import annotations

from tests.property.model import AccountModel, Answer, ModelGrant, Row

NOW = 1_000_000


def _grant(gid: str, credits: int, expires_ms: int | None = None, priority: int = 50) -> ModelGrant:
    return ModelGrant(gid, credits, expires_ms, priority, "promotion", credits)


def test_a_spend_takes_priority_then_soonest_expiry_then_the_standing_grants_first() -> None:
    account = AccountModel(overdraft=0, monthly=5, purchased=5, monthly_expires_ms=None)
    account.grants = [
        _grant("b-never", 5),
        _grant("c-later", 5, expires_ms=NOW + 200),
        _grant("d-sooner", 5, expires_ms=NOW + 100),
        _grant("e-first", 5, priority=10),
    ]
    order = [g if isinstance(g, str) else g.id for g in account.spend_order()]
    assert order == ["e-first", "d-sooner", "c-later", "monthly", "purchased", "b-never"]
    spent = account.consume(17, NOW)
    assert spent.answer == Answer(values=(17, 13, 13))
    draws = ("gd", "e-first:5,d-sooner:5,c-later:5")
    assert spent.rows == [Row("spend", -17, 13, (("dm", "-2"), draws))]
    assert (account.monthly, [g.id for g in account.grants]) == (3, ["b-never"])


def test_what_no_grant_covers_becomes_debt_on_purchased_within_the_overdraft() -> None:
    account = AccountModel(overdraft=10, monthly=0, purchased=0)
    account.grants = [_grant("g", 4)]
    assert account.consume(12, NOW).answer == Answer(values=(12, 2, -8))
    assert (account.purchased, account.grants) == (-8, [])
    refused = account.consume(3, NOW)
    assert refused.answer == Answer(error="insufficient_credits", error_args=(3, 2))
    assert refused.rows == []


def test_expiry_writes_one_row_per_grant_even_when_the_charge_is_refused() -> None:
    account = AccountModel(overdraft=0, purchased=1)
    account.grants = [_grant("a", 6, expires_ms=NOW), _grant("b", 4, expires_ms=NOW + 1)]
    refused = account.consume(6, NOW)
    assert refused.answer == Answer(error="insufficient_credits", error_args=(6, 5))
    assert refused.rows == [Row("expire", -6, 5, (("gr", "a"),))]
    spent = account.consume(5, NOW)  # a is gone: b, then purchased
    assert spent.rows == [Row("spend", -5, 0, (("gd", "b:4"),))]
    assert account.grants == []
    assert account.expire_grants(NOW + 10).answer == Answer(values=(0, 0))


def test_a_hold_sets_credits_aside_and_its_capture_takes_them_from_the_grants_as_they_are() -> None:
    account = AccountModel(overdraft=0, purchased=2)
    account.grants = [_grant("soon", 8, expires_ms=NOW + 50)]
    assert account.hold("h", 10, NOW).answer == Answer(values=(10, 0))
    # The grant expired under the hold: the capture may not take available below zero.
    refused = account.capture("h", None, NOW + 50)
    assert refused.answer == Answer(error="insufficient_credits", error_args=(10, 2))
    assert refused.rows == [Row("expire", -8, 2, (("gr", "soon"),))]
    assert account.capture("h", 2, NOW + 60).answer == Answer(values=(2, 0, 0))


def test_a_void_takes_back_what_is_left_and_may_take_available_below_zero() -> None:
    account = AccountModel(overdraft=0, purchased=0)
    account.grants = [_grant("promo", 10)]
    account.hold("h", 8, NOW)
    voided = account.void("promo", NOW)
    assert voided.answer == Answer(values=(10, 0, -8))
    assert voided.rows == [Row("adjust", -10, 0, (("gr", "promo"),))]
    assert account.void("promo", NOW).answer == Answer(error="grant_not_found")


def test_a_grant_already_past_its_expiry_is_refused_and_changes_nothing() -> None:
    account = AccountModel(overdraft=0, purchased=0)
    account.grants = [_grant("old", 3, expires_ms=NOW - 1)]
    outcome = account.grant("new", 5, expires_ms=NOW, priority=50, source="promotion", now_ms=NOW)
    assert (outcome.answer, outcome.rows) == (Answer(error="invalid_argument"), [])
    assert [g.id for g in account.grants] == ["old"]  # not even expired: nothing ran


def test_an_account_holds_at_most_100_explicit_grants() -> None:
    account = AccountModel(overdraft=0)
    account.grants = [_grant(f"g{i:03d}", 1) for i in range(99)] + [_grant("due", 1, NOW)]
    kept = account.grant("new", 5, expires_ms=None, priority=50, source="refund", now_ms=NOW)
    assert kept.answer.ok and len(account.grants) == 100  # the due one expired first
    refused = account.grant("more", 5, expires_ms=None, priority=50, source="refund", now_ms=NOW)
    assert refused.answer == Answer(error="too_many_grants")
