"""The credit rules R3 to R8, called directly, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text

from db import ledger, queries
from db.engine import session_scope
from db.errors import Conflict, NotFound, Rejected
from db.models import LedgerEntry
from schemas.common import Bucket, Status
from tests.conftest import at
from tests.factories import balance_of, create, manual_payload, setup_account

NOW = at("2026-11-10T12:00:00")


def entries(factory, account_id):
    with session_scope(factory) as s:
        return [(e.kind, e.bucket, e.amount, e.period) for e in s.execute(
            select(LedgerEntry).where(LedgerEntry.account_id == account_id)
            .order_by(LedgerEntry.id)).scalars()]


def test_monthly_first_then_extra_then_refused(factory):
    setup_account(factory, "a", monthly=3, extra=2, now=NOW)
    outcomes = [create(factory, manual_payload("a"), now=NOW) for _ in range(7)]
    assert [o.charged_bucket for o in outcomes] == [Bucket.monthly] * 3 + [Bucket.extra] * 2 + [
        None, None]
    assert [o.status for o in outcomes[5:]] == [Status.refused, Status.refused]
    assert all(o.reason == "insufficient_credits" and o.profile_id is None for o in outcomes[5:])
    assert balance_of(factory, "a") == (0, 0)
    with session_scope(factory) as s:
        assert ledger.verify(s) == []


def test_refusal_reports_what_is_left_and_when_it_renews(factory):
    setup_account(factory, "a", monthly=0, timezone="America/New_York", now=NOW)
    outcome = create(factory, manual_payload("a"), now=NOW)
    assert outcome.status is Status.refused
    message = outcome.message()
    assert message.remaining is not None
    assert message.remaining.monthly_remaining == 0 and message.remaining.extra_remaining == 0
    assert message.remaining.extra_credit_price_cents == 900
    assert message.remaining.renews_at == at("2026-12-01T05:00:00")


def test_unlimited_is_never_refused_and_records_usage(factory):
    setup_account(factory, "u", plan="enterprise", unlimited=True, now=NOW)
    outcomes = [create(factory, manual_payload("u"), now=NOW) for _ in range(20)]
    assert {o.charged_bucket for o in outcomes} == {Bucket.unlimited}
    kinds = entries(factory, "u")
    assert kinds.count(("unlimited_usage", "unlimited", 0, "2026-11")) == 20
    with session_scope(factory) as s:
        view = queries.credits(s, "u", now=NOW)
    assert view.unlimited and view.monthly_remaining is None and view.total_available is None


def test_purchase_is_idempotent_and_checked(factory):
    setup_account(factory, "a", monthly=1, now=NOW)
    with session_scope(factory) as s:
        _, first = ledger.purchase(s, purchase_id="p1", account_id="a", quantity=4,
                                   amount_cents=3600, now=NOW)
        _, again = ledger.purchase(s, purchase_id="p1", account_id="a", quantity=4,
                                   amount_cents=3600, now=NOW)
    assert (first, again) == (True, False)
    assert balance_of(factory, "a") == (1, 4)
    with pytest.raises(Conflict), session_scope(factory) as s:
        ledger.purchase(s, purchase_id="p1", account_id="a", quantity=5, amount_cents=4500,
                        now=NOW)
    with pytest.raises(Rejected), session_scope(factory) as s:
        ledger.purchase(s, purchase_id="p2", account_id="a", quantity=2, amount_cents=1000,
                        now=NOW)
    with pytest.raises(NotFound), session_scope(factory) as s:
        ledger.purchase(s, purchase_id="p3", account_id="nobody", quantity=1, amount_cents=900,
                        now=NOW)


def test_adjust_records_who_and_why_and_never_goes_below_zero(factory):
    setup_account(factory, "a", monthly=2, now=NOW)
    with session_scope(factory) as s:
        ledger.adjust(s, "a", amount=-2, bucket=Bucket.monthly, reason="test account",
                      actor="ops-1", now=NOW, key="adj-1")
    with pytest.raises(Rejected), session_scope(factory) as s:
        ledger.adjust(s, "a", amount=-1, bucket=Bucket.monthly, reason="again", actor="ops-1",
                      now=NOW, key="adj-2")
    with session_scope(factory) as s:
        entry = s.execute(select(LedgerEntry).where(LedgerEntry.kind == "adjustment")).scalar_one()
        assert (entry.actor, entry.reason, entry.amount) == ("ops-1", "test account", -2)
    assert balance_of(factory, "a") == (0, 0)


def test_month_boundary_renews_before_charging_in_the_accounts_zone(factory):
    for account, zone in (("ny", "America/New_York"), ("kol", "Asia/Kolkata")):
        setup_account(factory, account, monthly=3, extra=2, timezone=zone, now=NOW)
        create(factory, manual_payload(account), now=NOW)
    # 2026-12-01 00:00 in Kolkata is 2026-11-30 18:30 UTC; New York is still in November.
    instant = at("2026-11-30T18:30:00")
    ny = create(factory, manual_payload("ny"), now=instant)
    kol = create(factory, manual_payload("kol"), now=instant)
    assert ny.charged_bucket is Bucket.monthly and kol.charged_bucket is Bucket.monthly
    assert balance_of(factory, "ny") == (1, 2)  # 3 - 2 charges, still November
    assert balance_of(factory, "kol") == (2, 2)  # renewed to 3, then charged
    assert entries(factory, "kol")[-3:] == [
        ("expiry", "monthly", -2, "2026-12"), ("grant", "monthly", 3, "2026-12"),
        ("charge", "monthly", -1, "2026-12")]
    with session_scope(factory) as s:
        assert ledger.verify(s) == []


def test_unused_monthly_credits_expire_and_purchased_ones_stay(factory):
    setup_account(factory, "a", monthly=3, extra=5, now=NOW)
    later = at("2027-01-15T00:00:00")  # two months on: one renewal, for January
    with session_scope(factory) as s:
        view = queries.credits(s, "a", now=later)
        assert (view.period, view.monthly_remaining, view.extra_remaining) == ("2027-01", 3, 5)
        assert ledger.renew_account(s, "a", later) is True
        assert ledger.renew_account(s, "a", later) is False
    assert balance_of(factory, "a") == (3, 5)
    assert [e for e in entries(factory, "a") if e[0] in ("grant", "expiry")] == [
        ("grant", "monthly", 3, "2026-11"), ("expiry", "monthly", -3, "2027-01"),
        ("grant", "monthly", 3, "2027-01")]


def test_upgrade_is_immediate_from_what_was_used(factory):
    setup_account(factory, "a", monthly=3, now=NOW)
    for _ in range(2):
        create(factory, manual_payload("a"), now=NOW)
    with session_scope(factory) as s:
        ledger.add_plan(s, "max", monthly=10, unlimited=False, now=NOW)
        ledger.upsert_account(s, "a", plan_code="max", timezone=None,
                              occurred_at=at("2026-11-11T00:00:00"), now=NOW)
    assert balance_of(factory, "a") == (8, 0)  # 10 allowance - 2 used


def test_upgrade_never_below_zero(factory):
    setup_account(factory, "a", monthly=5, now=NOW)
    for _ in range(5):
        create(factory, manual_payload("a"), now=NOW)
    with session_scope(factory) as s:
        ledger.add_plan(s, "six", monthly=6, unlimited=False, now=NOW)
        ledger.add_plan(s, "small", monthly=1, unlimited=False, now=NOW)
    with session_scope(factory) as s:
        ledger.upsert_account(s, "a", plan_code="six", timezone=None,
                              occurred_at=at("2026-11-11T00:00:00"), now=NOW)
    assert balance_of(factory, "a") == (1, 0)


def test_downgrade_waits_for_the_next_renewal(factory):
    setup_account(factory, "a", monthly=10, now=NOW)
    with session_scope(factory) as s:
        ledger.add_plan(s, "small", monthly=2, unlimited=False, now=NOW)
        ledger.upsert_account(s, "a", plan_code="small", timezone=None,
                              occurred_at=at("2026-11-11T00:00:00"), now=NOW)
        view = queries.credits(s, "a", now=NOW)
    assert (view.plan, view.pending_plan, view.monthly_remaining) == ("pro", "small", 10)
    december = at("2026-12-01T00:00:00")
    outcome = create(factory, manual_payload("a"), now=december)
    assert outcome.charged_bucket is Bucket.monthly
    assert balance_of(factory, "a") == (1, 0)
    with session_scope(factory) as s:
        view = queries.credits(s, "a", now=december)
    assert (view.plan, view.pending_plan, view.monthly_allowance) == ("small", None, 2)


def test_moving_to_unlimited_is_immediate_and_back_waits(factory):
    setup_account(factory, "a", monthly=0, now=NOW)
    assert create(factory, manual_payload("a"), now=NOW).status is Status.refused
    with session_scope(factory) as s:
        ledger.add_plan(s, "partners", monthly=None, unlimited=True, now=NOW)
        ledger.upsert_account(s, "a", plan_code="partners", timezone=None,
                              occurred_at=at("2026-11-11T00:00:00"), now=NOW)
    assert create(factory, manual_payload("a"), now=NOW).charged_bucket is Bucket.unlimited
    with session_scope(factory) as s:
        ledger.upsert_account(s, "a", plan_code="pro", timezone=None,
                              occurred_at=at("2026-11-12T00:00:00"), now=NOW)
    assert create(factory, manual_payload("a"), now=NOW).charged_bucket is Bucket.unlimited
    december = at("2026-12-01T00:00:00")
    assert create(factory, manual_payload("a"), now=december).status is Status.refused


def test_an_older_plan_change_is_ignored(factory):
    setup_account(factory, "a", monthly=3, now=NOW)
    with session_scope(factory) as s:
        ledger.add_plan(s, "max", monthly=10, unlimited=False, now=NOW)
        ledger.upsert_account(s, "a", plan_code="max", timezone=None,
                              occurred_at=at("2026-11-01T00:00:00"), now=NOW)
        view = queries.credits(s, "a", now=NOW)
    assert view.plan == "pro"


def test_plan_rules(factory):
    with session_scope(factory) as s:
        ledger.add_plan(s, "pro", monthly=3, unlimited=False, now=NOW)
        assert ledger.add_plan(s, "pro", monthly=3, unlimited=False, now=NOW).code == "pro"
    with pytest.raises(Conflict), session_scope(factory) as s:
        ledger.add_plan(s, "pro", monthly=4, unlimited=False, now=NOW)
    with pytest.raises(Rejected), session_scope(factory) as s:
        ledger.add_plan(s, "odd", monthly=4, unlimited=True, now=NOW)
    with pytest.raises(NotFound), session_scope(factory) as s:
        ledger.upsert_account(s, "a", plan_code="nope", timezone=None, occurred_at=NOW, now=NOW)


def test_verify_finds_a_balance_changed_behind_the_ledgers_back(factory):
    setup_account(factory, "a", monthly=3, now=NOW)
    setup_account(factory, "b", monthly=3, now=NOW)
    with session_scope(factory) as s:
        s.execute(text("UPDATE balances SET extra_remaining = 7 WHERE account_id = 'b'"))
    with session_scope(factory) as s:
        mismatches = ledger.verify(s)
    assert [(m.account_id, m.bucket, m.balance, m.ledger) for m in mismatches] == [
        ("b", "extra", 7, 0)]


@pytest.mark.parametrize("statement", [
    "UPDATE ledger_entries SET amount = 100",
    "DELETE FROM ledger_entries",
])
def test_the_database_refuses_to_change_a_ledger_entry(factory, statement):
    setup_account(factory, "a", monthly=3, now=NOW)
    with pytest.raises(Exception, match="append-only"), session_scope(factory) as s:
        s.execute(text(statement))
    assert entries(factory, "a") == [("grant", "monthly", 3, "2026-11")]
