"""The lazy path and the scheduled path write the same ledger and leave the same balances."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db import ledger, renewal
from db.engine import session_scope
from db.models import Account, Balance, LedgerEntry
from tests.conftest import at

CREATED = at("2025-10-10T12:00:00")
USED = at("2025-10-20T12:00:00")
#: a renewal after a two-month gap, then the next first of the month in UTC (not yet
#: in Los Angeles)
RENEWALS = (at("2025-12-15T00:00:00"), at("2026-01-01T00:00:00"))
#: (name, plan, zone)
ACCOUNTS = [("plain", "pro", "UTC"), ("la", "basic", "America/Los_Angeles"),
            ("bought", "pro", "Pacific/Kiritimati"), ("down", "pro", "Asia/Kolkata"),
            ("ent", "ent", "UTC"), ("up", "basic", "UTC"), ("zero", "zero", "UTC"),
            ("ent-down", "ent", "UTC")]


def build(factory: sessionmaker[Session], prefix: str) -> None:
    """The same histories for every prefix: charges, purchases, upgrades, downgrades."""
    with session_scope(factory) as s:
        for name, plan, tz in ACCOUNTS:
            ledger.upsert_account(s, prefix + name, plan_code=plan, timezone=tz,
                                  occurred_at=CREATED, now=CREATED)
    with session_scope(factory) as s:
        for i in range(4):
            ledger.charge(s, prefix + "plain", event_id=f"{prefix}plain-{i}", now=USED)
        ledger.purchase(s, purchase_id=prefix + "p", account_id=prefix + "bought", quantity=5,
                        amount_cents=4500, now=USED)
        for i in range(11):
            ledger.charge(s, prefix + "bought", event_id=f"{prefix}bought-{i}", now=USED)
        for i in range(2):
            ledger.charge(s, prefix + "ent", event_id=f"{prefix}ent-{i}", now=USED)
        for name, plan in (("down", "basic"), ("up", "ent"), ("ent-down", "pro")):
            ledger.upsert_account(s, prefix + name, plan_code=plan, timezone=None,
                                  occurred_at=USED, now=USED)


def state(factory: sessionmaker[Session], prefix: str) -> dict[str, list[tuple[object, ...]]]:
    """Entries (without ids and created_at), balances and accounts, with the prefix removed."""
    def strip(value: object) -> object:
        return value.replace(prefix, "") if isinstance(value, str) else value

    with session_scope(factory) as s:
        rows = {
            "entries": [(e.account_id, e.kind, e.bucket, e.amount, e.period, e.idempotency_key,
                         e.event_id, e.reference, e.reason, e.actor, e.monthly_after,
                         e.extra_after)
                        for e in s.execute(select(LedgerEntry)
                                           .where(LedgerEntry.account_id.startswith(prefix))
                                           .order_by(LedgerEntry.account_id, LedgerEntry.id))
                        .scalars()],
            "balances": [(b.account_id, b.period, b.period_start, b.period_end,
                          b.monthly_allowance, b.unlimited, b.monthly_used,
                          b.monthly_remaining, b.extra_remaining, b.unlimited_used,
                          b.updated_at)
                         for b in s.execute(select(Balance)
                                            .where(Balance.account_id.startswith(prefix))
                                            .order_by(Balance.account_id)).scalars()],
            "accounts": [(a.id, a.plan_code, a.pending_plan_code, a.timezone, a.updated_at)
                         for a in s.execute(select(Account).where(Account.id.startswith(prefix))
                                            .order_by(Account.id)).scalars()],
        }
    return {key: [tuple(strip(v) for v in row) for row in value] for key, value in rows.items()}


def renew_lazily(factory: sessionmaker[Session], prefix: str, now: datetime) -> int:
    """Half through ``renew_account``, half through ``lock_balance``, one transaction each."""
    renewed = 0
    for i, (name, _, _) in enumerate(ACCOUNTS):
        with session_scope(factory) as s:
            if i % 2:
                renewed += ledger.renew_account(s, prefix + name, now)
            else:
                before = s.get(Balance, prefix + name)
                assert before is not None
                due = now >= before.period_end
                ledger.lock_balance(s, prefix + name, now)
                renewed += due
    return renewed


def test_lazy_and_scheduled_paths_give_identical_ledgers(factory):
    with session_scope(factory) as s:
        for code, monthly, unlimited in (("basic", 3, False), ("pro", 10, False),
                                         ("zero", 0, False), ("ent", None, True)):
            ledger.add_plan(s, code, monthly=monthly, unlimited=unlimited, now=CREATED)
    build(factory, "lazy-")
    build(factory, "sched-")
    for now, expected in zip(RENEWALS, (8, 7), strict=True):
        assert renew_lazily(factory, "lazy-", now) == expected
        assert renewal.renew_due(factory, now=now) == expected  # the sched- accounts only
    lazy, scheduled = state(factory, "lazy-"), state(factory, "sched-")
    assert lazy == scheduled
    assert len(lazy["entries"]) == 49
    with session_scope(factory) as s:
        assert ledger.verify(s) == []
