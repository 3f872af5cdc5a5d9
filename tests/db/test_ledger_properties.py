"""Hypothesis: random sequences of grants, purchases, charges, plan changes,
adjustments and renewals keep every balance equal to its ledger, never negative,
and in step with a plain model of the rules."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from db import ledger
from db.engine import session_scope
from db.errors import Rejected
from schemas.common import Bucket
from tests.conftest import at
from tests.factories import balance_of, create, manual_payload

START = at("2026-01-05T00:00:00")
PLANS = {"p0": 0, "p3": 3, "p10": 10, "unl": None}
_ids = itertools.count()


@dataclass
class Model:
    """The rules, as plainly as they can be written."""

    plan: str
    pending: str | None
    month: int
    monthly: int
    used: int
    extra: int

    def renew(self, month: int) -> None:
        if month > self.month:
            if self.pending:
                self.plan, self.pending = self.pending, None
            self.month, self.monthly, self.used = month, PLANS[self.plan] or 0, 0

    def charge(self) -> Bucket | None:
        if PLANS[self.plan] is None:
            return Bucket.unlimited
        if self.monthly:
            self.monthly -= 1
            self.used += 1
            return Bucket.monthly
        if self.extra:
            self.extra -= 1
            return Bucket.extra
        return None

    def change(self, plan: str) -> None:
        old, new = PLANS[self.plan], PLANS[plan]
        if plan == self.plan:
            self.pending = None
        elif new is not None and (old is None or new < old):
            self.pending = plan
        else:
            self.plan, self.pending = plan, None
            if new is not None:
                self.monthly = max(0, new - self.used)


def _month(instant) -> int:
    return instant.year * 12 + instant.month


ops = st.lists(st.one_of(
    st.tuples(st.just("charge"), st.integers(1, 4)),
    st.tuples(st.just("buy"), st.integers(1, 5)),
    st.tuples(st.just("days"), st.integers(1, 70)),
    st.tuples(st.just("plan"), st.sampled_from(sorted(PLANS))),
    st.tuples(st.just("adjust"), st.integers(-4, 4).filter(bool), st.sampled_from(
        [Bucket.monthly, Bucket.extra])),
), max_size=25)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(start_plan=st.sampled_from(sorted(PLANS)), steps=ops)
def test_balance_equals_ledger_and_model(factory, start_plan, steps):
    account = f"acct-{next(_ids)}"
    now = START
    with session_scope(factory) as s:
        for code, monthly in PLANS.items():
            ledger.add_plan(s, code, monthly=monthly, unlimited=monthly is None, now=now)
        ledger.upsert_account(s, account, plan_code=start_plan, timezone=None,
                              occurred_at=now, now=now)
    model = Model(start_plan, None, _month(now), PLANS[start_plan] or 0, 0, 0)
    for n, step in enumerate(steps):
        model.renew(_month(now))
        if step[0] == "charge":
            for _ in range(step[1]):
                expected = model.charge()
                got = create(factory, manual_payload(account), now=now).charged_bucket
                assert got == expected
        elif step[0] == "buy":
            with session_scope(factory) as s:
                ledger.purchase(s, purchase_id=f"{account}-{n}", account_id=account,
                                quantity=step[1], amount_cents=step[1] * 900, now=now)
            model.extra += step[1]
        elif step[0] == "days":
            now += timedelta(days=step[1])
            model.renew(_month(now))
            with session_scope(factory) as s:
                ledger.renew_account(s, account, now)
        elif step[0] == "plan":
            with session_scope(factory) as s:
                ledger.upsert_account(s, account, plan_code=step[1], timezone=None,
                                      occurred_at=now + timedelta(seconds=n), now=now)
            model.change(step[1])
        else:
            _, amount, bucket = step
            held = model.monthly if bucket is Bucket.monthly else model.extra
            try:
                with session_scope(factory) as s:
                    ledger.adjust(s, account, amount=amount, bucket=bucket, reason="test",
                                  actor="prop", now=now, key=f"{account}-adj-{n}")
            except Rejected:
                assert held + amount < 0
            else:
                assert held + amount >= 0
                if bucket is Bucket.monthly:
                    model.monthly += amount
                else:
                    model.extra += amount
        monthly, extra = balance_of(factory, account)
        assert monthly >= 0 and extra >= 0
        assert (extra, monthly if PLANS[model.plan] is not None else model.monthly) == (
            model.extra, model.monthly)
        with session_scope(factory) as s:
            assert [m for m in ledger.verify(s) if m.account_id == account] == []
