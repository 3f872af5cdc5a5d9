"""First-of-month renewal (R3), scheduled and lazy, with an injected clock, on both backends."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db import ledger, renewal
from db.engine import session_scope
from db.models import Account, Balance, LedgerEntry
from tests.conftest import at

NOV = at("2025-11-10T12:00:00")
SECOND = timedelta(seconds=1)


def plans(factory: sessionmaker[Session]) -> None:
    with session_scope(factory) as s:
        ledger.add_plan(s, "basic", monthly=3, unlimited=False, now=NOV)
        ledger.add_plan(s, "pro", monthly=10, unlimited=False, now=NOV)
        ledger.add_plan(s, "enterprise", monthly=None, unlimited=True, now=NOV)


def account(factory: sessionmaker[Session], account_id: str, *, plan: str = "pro",
            tz: str = "UTC", now: datetime = NOV) -> None:
    with session_scope(factory) as s:
        ledger.upsert_account(s, account_id, plan_code=plan, timezone=tz, occurred_at=now,
                              now=now)


def entries(factory: sessionmaker[Session], account_id: str) -> list[tuple[object, ...]]:
    """(kind, bucket, amount, period, key, reason, monthly_after, extra_after), in order."""
    with session_scope(factory) as s:
        return [(e.kind, e.bucket, e.amount, e.period, e.idempotency_key, e.reason,
                 e.monthly_after, e.extra_after)
                for e in s.execute(select(LedgerEntry).where(LedgerEntry.account_id == account_id)
                                   .order_by(LedgerEntry.id)).scalars()]


def balance(factory: sessionmaker[Session], account_id: str) -> Balance:
    with session_scope(factory) as s:
        found = s.get(Balance, account_id)
        assert found is not None
        return found


def verified(factory: sessionmaker[Session]) -> bool:
    with session_scope(factory) as s:
        return ledger.verify(s) == []


# (zone, created, the renewal instant in UTC, the next period, the renewal after it):
# written out by hand, not computed with the code under test
BOUNDARIES = [
    # DST ends on 2 Nov 2025: November starts at 07:00 UTC and ends at 08:00 UTC
    ("America/Los_Angeles", "2025-11-10T12:00", "2025-12-01T08:00", "2025-12",
     "2026-01-01T08:00"),
    # DST starts on 8 Mar 2026: March starts at 08:00 UTC and ends at 07:00 UTC
    ("America/Los_Angeles", "2026-03-10T12:00", "2026-04-01T07:00", "2026-04",
     "2026-05-01T07:00"),
    ("Pacific/Kiritimati", "2025-11-10T12:00", "2025-11-30T10:00", "2025-12",
     "2025-12-31T10:00"),
    ("Asia/Kolkata", "2025-11-10T12:00", "2025-11-30T18:30", "2025-12", "2025-12-31T18:30"),
]


@pytest.mark.parametrize(("tz", "created", "boundary", "period", "following"), BOUNDARIES,
                         ids=["los_angeles-nov", "los_angeles-mar", "kiritimati", "kolkata"])
def test_renews_exactly_at_local_midnight_of_the_first(factory, tz, created, boundary, period,
                                                       following):
    plans(factory)
    account(factory, "a", tz=tz, now=at(created))
    account(factory, "lazy", tz=tz, now=at(created))
    before, midnight = at(boundary) - SECOND, at(boundary)
    with session_scope(factory) as s:
        assert ledger.renew_account(s, "lazy", before) is False
    assert renewal.renew_due(factory, now=before) == 0
    assert balance(factory, "a").period == created[:7]
    assert len(entries(factory, "a")) == 1

    assert renewal.renew_due(factory, now=midnight) == 2
    renewed = balance(factory, "a")
    assert renewed.period == period
    assert (renewed.period_start, renewed.period_end) == (midnight, at(following))
    assert entries(factory, "a")[1:] == [
        ("expiry", "monthly", -10, period, f"expire:a:{period}",
         f"unused monthly credits of {created[:7]}", 0, 0),
        ("grant", "monthly", 10, period, f"grant:a:{period}", "plan pro", 10, 0),
    ]


def test_a_second_run_and_a_later_run_in_the_month_grant_nothing(factory):
    plans(factory)
    for name in ("a", "b", "c"):
        account(factory, name)
    dec = at("2025-12-01T00:00:00")
    assert renewal.renew_due(factory, now=dec) == 3
    assert renewal.renew_due(factory, now=dec) == 0
    assert renewal.renew_due(factory, now=dec + timedelta(days=20)) == 0
    with session_scope(factory) as s:
        assert ledger.renew_account(s, "a", dec + timedelta(days=1)) is False
        grants = s.execute(select(LedgerEntry.account_id).where(
            LedgerEntry.kind == "grant", LedgerEntry.period == "2025-12")).scalars().all()
    assert sorted(grants) == ["a", "b", "c"]
    assert verified(factory)


def test_small_chunks_renew_everything_once(factory):
    plans(factory)
    for i in range(23):
        account(factory, f"acct-{i:02d}", tz=("UTC", "Asia/Kolkata", "Pacific/Kiritimati")[i % 3])
    chunks: list[int] = []
    assert renewal.renew_due(factory, now=at("2025-12-01T00:00:00"), chunk=5, workers=1,
                             on_chunk=chunks.append) == 23
    assert chunks == [5, 5, 5, 5, 3]
    assert renewal.renew_due(factory, now=at("2025-12-01T00:00:00"), chunk=5) == 0
    assert verified(factory)


@pytest.mark.parametrize("workers", [2, 3])
def test_side_by_side_workers_split_the_accounts_and_renew_each_once(factory, workers):
    plans(factory)
    for i in range(40):
        account(factory, f"acct-{i:02d}", tz=("UTC", "Asia/Kolkata")[i % 2])
    chunks: list[int] = []
    assert renewal.renew_due(factory, now=at("2025-12-01T00:00:00"), chunk=4, workers=workers,
                             on_chunk=chunks.append) == 40
    assert sum(chunks) == 40
    assert renewal.renew_due(factory, now=at("2025-12-01T00:00:00"), workers=workers) == 0
    with session_scope(factory) as s:
        grants = s.execute(select(LedgerEntry.account_id).where(
            LedgerEntry.kind == "grant", LedgerEntry.period == "2025-12")).scalars().all()
    assert sorted(grants) == [f"acct-{i:02d}" for i in range(40)]
    assert verified(factory)


def test_a_two_month_gap_renews_once_with_the_expiry_of_what_was_left(factory):
    plans(factory)
    sept = at("2025-09-15T12:00:00")
    account(factory, "a", now=sept)
    with session_scope(factory) as s:
        for i in range(4):
            ledger.charge(s, "a", event_id=f"e{i}", now=sept)
    assert renewal.renew_due(factory, now=at("2025-11-20T00:00:00")) == 1
    assert entries(factory, "a")[-2:] == [
        ("expiry", "monthly", -6, "2025-11", "expire:a:2025-11",
         "unused monthly credits of 2025-09", 0, 0),
        ("grant", "monthly", 10, "2025-11", "grant:a:2025-11", "plan pro", 10, 0),
    ]
    assert not [e for e in entries(factory, "a") if e[3] == "2025-10"]
    assert balance(factory, "a").period == "2025-11"
    assert verified(factory)


def test_credits_bought_before_the_renewal_survive_it(factory):
    plans(factory)
    account(factory, "a", plan="basic")
    with session_scope(factory) as s:
        ledger.purchase(s, purchase_id="p1", account_id="a", quantity=5, amount_cents=4500,
                        now=NOV)
        for i in range(4):  # 3 monthly, then 1 extra
            ledger.charge(s, "a", event_id=f"e{i}", now=NOV)
    assert renewal.renew_due(factory, now=at("2025-12-01T00:00:00")) == 1
    assert entries(factory, "a")[-1] == (
        "grant", "monthly", 3, "2025-12", "grant:a:2025-12", "plan basic", 3, 4)
    after = balance(factory, "a")
    assert (after.monthly_remaining, after.extra_remaining, after.monthly_used) == (3, 4, 0)
    assert verified(factory)


def test_a_downgrade_takes_effect_at_the_renewal(factory):
    plans(factory)
    account(factory, "a", plan="pro")
    mid = at("2025-11-20T00:00:00")
    with session_scope(factory) as s:
        ledger.upsert_account(s, "a", plan_code="basic", timezone=None, occurred_at=mid,
                              now=mid)
        assert s.get(Account, "a").pending_plan_code == "basic"  # type: ignore[union-attr]
    dec = at("2025-12-01T00:00:00")
    assert renewal.renew_due(factory, now=dec) == 1
    with session_scope(factory) as s:
        acct = s.get(Account, "a")
        assert acct is not None
        assert (acct.plan_code, acct.pending_plan_code, acct.updated_at) == ("basic", None, dec)
    assert entries(factory, "a")[-1] == (
        "grant", "monthly", 3, "2025-12", "grant:a:2025-12", "plan basic", 3, 0)
    assert balance(factory, "a").monthly_allowance == 3


def test_unlimited_accounts_record_a_zero_renewal(factory):
    plans(factory)
    account(factory, "ent", plan="enterprise")
    account(factory, "up", plan="basic")
    with session_scope(factory) as s:
        ledger.charge(s, "ent", event_id="e1", now=NOV)
        ledger.upsert_account(s, "up", plan_code="enterprise", timezone=None,
                              occurred_at=NOV + SECOND, now=NOV)
    assert renewal.renew_due(factory, now=at("2025-12-01T00:00:00")) == 2
    assert entries(factory, "ent")[-1] == (
        "grant", "unlimited", 0, "2025-12", "grant:ent:2025-12", "plan enterprise", 0, 0)
    # the basic credits left when it moved to unlimited expire like any others
    assert entries(factory, "up")[-2:] == [
        ("expiry", "monthly", -3, "2025-12", "expire:up:2025-12",
         "unused monthly credits of 2025-11", 0, 0),
        ("grant", "unlimited", 0, "2025-12", "grant:up:2025-12", "plan enterprise", 0, 0),
    ]
    ent = balance(factory, "ent")
    assert ent.unlimited and ent.monthly_allowance is None and ent.unlimited_used == 0
    assert verified(factory)


def test_a_zone_that_changed_since_the_rows_were_read_is_left_for_the_next_run(factory):
    plans(factory)
    account(factory, "a", tz="Asia/Kolkata")
    with session_scope(factory) as s:
        assert renewal.renew_locked(s, [("a", "UTC")], now=at("2025-12-01T00:00:00")) == 0
        assert renewal.renew_locked(s, [("a", "Asia/Kolkata")],
                                    now=at("2025-12-01T00:00:00")) == 1


def test_count_due(factory):
    plans(factory)
    account(factory, "utc")
    account(factory, "kiritimati", tz="Pacific/Kiritimati")
    with session_scope(factory) as s:
        assert renewal.count_due(s, now=at("2025-11-30T10:00:00")) == 1
        assert renewal.count_due(s, now=at("2025-12-01T00:00:00")) == 2


def test_account_ids_with_quotes_commas_and_accents_renew(factory):
    plans(factory)
    odd = ["o'brien, \"jr\"", "zoë:{1}", "tab\there", "back\\slash"]
    for account_id in odd:
        account(factory, account_id)
    assert renewal.renew_due(factory, now=at("2025-12-01T00:00:00"), chunk=2, workers=1) == 4
    for account_id in odd:
        assert entries(factory, account_id)[-1][4] == f"grant:{account_id}:2025-12"
    assert verified(factory)
