"""A hypothesis state machine over the domain, checked step by step against a plain model.

Accounts on four plans in two time zones, plan changes, purchases (some
repeated), manual creations (some delivered again, some sent again by the
main app), leads (some with a webhook-id seen before), time passing across
months with the lazy and the scheduled renewal. After every step each balance,
plan, profile count and charge count equals the model's, and the ledger verifies.
Runs on SQLite, and with fewer examples on PostgreSQL.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db import intake, ledger, renewal, sources
from db.engine import make_engine, make_session_factory, session_scope
from db.models import Account, Balance, ClientProfile, LedgerEntry
from schemas.common import Bucket, Channel
from schemas.leads import LeadProfile
from schemas.messages import CreateManualProfile
from tests import services
from tests.conftest import PG_TEMPLATE, at
from tests.factories import manual_payload

START = at("2026-01-28T09:00:00")
PLANS: dict[str, int | None] = {"p0": 0, "p3": 3, "p10": 10, "unl": None}
ZONES = ("UTC", "Pacific/Auckland")
_ids = itertools.count()


def month_of(instant: datetime, tz: str) -> int:
    local = instant.astimezone(ZoneInfo(tz))
    return local.year * 12 + local.month


@dataclass
class Model:
    """One account, the rules written as plainly as they can be (R3 to R7)."""

    tz: str
    plan: str
    month: int
    monthly: int
    pending: str | None = None
    used: int = 0
    extra: int = 0
    profiles: Counter[str] = field(default_factory=Counter)
    charges: int = 0

    def renew(self, now: datetime) -> None:
        month = month_of(now, self.tz)
        if month > self.month:
            if self.pending:
                self.plan, self.pending = self.pending, None
            self.month, self.monthly, self.used = month, PLANS[self.plan] or 0, 0

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

    def charge(self) -> Bucket | None:
        if PLANS[self.plan] is None:
            bucket: Bucket | None = Bucket.unlimited
        elif self.monthly:
            self.monthly, self.used, bucket = self.monthly - 1, self.used + 1, Bucket.monthly
        elif self.extra:
            self.extra, bucket = self.extra - 1, Bucket.extra
        else:
            return None
        self.charges += 1
        self.profiles["manual"] += 1
        return bucket


@dataclass
class Request:
    account_id: str
    request_id: str
    message_id: str
    created: bool


class Domain(RuleBasedStateMachine):
    """Subclassed per database (see ``_run``): ``new_database`` gives a fresh migrated URL."""

    new_database: Callable[[], tuple[str, Callable[[], None]]]

    accounts = Bundle("accounts")
    requests = Bundle("requests")
    leads = Bundle("leads")

    def __init__(self) -> None:
        super().__init__()
        url, self._drop = type(self).new_database()
        self.engine = make_engine(url)
        self.sessions: sessionmaker[Session] = make_session_factory(self.engine)
        self.now = START
        self.tick = 0
        self.models: dict[str, Model] = {}
        self.sources: dict[tuple[str, str], str] = {}
        self.purchases: dict[str, list[tuple[str, int]]] = {}
        with session_scope(self.sessions) as s:
            for code, monthly in PLANS.items():
                ledger.add_plan(s, code, monthly=monthly, unlimited=monthly is None, now=START)

    def teardown(self) -> None:
        self.engine.dispose()
        self._drop()

    def _occurred(self) -> datetime:
        self.tick += 1
        return self.now + timedelta(microseconds=self.tick)

    @rule(target=accounts, plan=st.sampled_from(sorted(PLANS)), tz=st.sampled_from(ZONES))
    def add_account(self, plan: str, tz: str) -> str:
        account_id = f"acct-{next(_ids)}"
        with session_scope(self.sessions) as s:
            ledger.upsert_account(s, account_id, plan_code=plan, timezone=tz,
                                  occurred_at=self._occurred(), now=self.now)
            for kind in (Channel.website, Channel.funnel):
                src = sources.register(s, account_id, kind=kind, name=kind.value, now=self.now)
                self.sources[(account_id, kind.value)] = src.source.id
        self.models[account_id] = Model(tz=tz, plan=plan, month=month_of(self.now, tz),
                                        monthly=PLANS[plan] or 0)
        self.purchases[account_id] = []
        return account_id

    @rule(account=accounts, plan=st.sampled_from(sorted(PLANS)))
    def change_plan(self, account: str, plan: str) -> None:
        with session_scope(self.sessions) as s:
            ledger.upsert_account(s, account, plan_code=plan, timezone=None,
                                  occurred_at=self._occurred(), now=self.now)
        model = self.models[account]
        model.renew(self.now)
        model.change(plan)

    @rule(account=accounts, quantity=st.integers(1, 4), repeat=st.booleans())
    def purchase(self, account: str, quantity: int, repeat: bool) -> None:
        earlier = self.purchases[account]
        purchase_id, quantity = earlier[-1] if repeat and earlier else (
            f"{account}-buy-{len(earlier)}", quantity)
        with session_scope(self.sessions) as s:
            _, written = ledger.purchase(s, purchase_id=purchase_id, account_id=account,
                                         quantity=quantity, amount_cents=quantity * 900,
                                         now=self.now)
        model = self.models[account]
        model.renew(self.now)
        assert written == (not (repeat and earlier))
        if written:
            earlier.append((purchase_id, quantity))
            model.extra += quantity

    def _create(self, account: str, request_id: str, message_id: str) -> intake.Outcome:
        msg = CreateManualProfile.model_validate(manual_payload(account, request_id))
        with session_scope(self.sessions) as s:
            return intake.create_manual_profile(s, msg, message_id=message_id, now=self.now)

    @rule(target=requests, account=accounts)
    def manual(self, account: str) -> Request:
        request = Request(account, f"req-{next(_ids)}", f"msg-{next(_ids)}", created=False)
        model = self.models[account]
        model.renew(self.now)
        expected = model.charge()
        outcome = self._create(account, request.request_id, request.message_id)
        assert outcome.charged_bucket == expected
        assert outcome.status.value == ("created" if expected else "refused")
        request.created = expected is not None
        return request

    @rule(request=requests, same_message=st.booleans())
    def manual_again(self, request: Request, same_message: bool) -> None:
        """A redelivery (same message) or the main app sending the request again.

        A refused request sent again in a new message is processed afresh (R6: the
        agent bought credits and retries); the refused message itself, redelivered,
        gets its first outcome (its id is recorded on the event).
        """
        message_id = request.message_id if same_message else f"msg-{next(_ids)}"
        model = self.models[request.account_id]
        model.renew(self.now)
        if request.created:
            outcome = self._create(request.account_id, request.request_id, message_id)
            assert outcome.status.value == ("created" if same_message else "duplicate")
            assert outcome.charged_bucket is None or same_message
            return
        if same_message:
            # the refused message itself delivered again: its first outcome, nothing new
            outcome = self._create(request.account_id, request.request_id, message_id)
            assert (outcome.status.value, outcome.charged_bucket) == ("refused", None)
            return
        expected = model.charge()
        outcome = self._create(request.account_id, request.request_id, message_id)
        assert outcome.charged_bucket == expected
        request.created, request.message_id = expected is not None, message_id

    @rule(account=accounts)
    def manual_for_an_unknown_account(self, account: str) -> None:
        outcome = self._create(f"{account}-gone", f"req-{next(_ids)}", f"msg-{next(_ids)}")
        assert (outcome.status.value, outcome.reason) == ("refused", "unknown_account")

    @rule(target=leads, account=accounts, kind=st.sampled_from(["website", "funnel"]))
    def lead(self, account: str, kind: str) -> tuple[str, str, str]:
        webhook_id = f"wh-{next(_ids)}"
        event_id, new = self._record_lead(account, kind, webhook_id)
        assert new
        with session_scope(self.sessions) as s:
            outcome = intake.ingest_lead(s, event_id, now=self.now)
        assert outcome is not None and outcome.status.value == "created"
        assert outcome.charged_bucket is None
        self.models[account].profiles[kind] += 1
        return account, kind, webhook_id

    @rule(lead=consumes(leads))
    def lead_again(self, lead: tuple[str, str, str]) -> None:
        event_id, new = self._record_lead(*lead)
        assert not new
        with session_scope(self.sessions) as s:
            assert intake.ingest_lead(s, event_id, now=self.now) is None

    def _record_lead(self, account: str, kind: str, webhook_id: str) -> tuple[str, bool]:
        with session_scope(self.sessions) as s:
            src = sources.find(s, self.sources[(account, kind)])
            assert src is not None
            event, new = intake.record_lead(s, src, webhook_id=webhook_id, raw_body="{}",
                                            content_type="application/json",
                                            lead=LeadProfile(first_name="Lead"), errors=None,
                                            now=self.now)
            return event.id, new

    @rule(hours=st.integers(1, 24 * 45), scheduled=st.booleans())
    def time_passes(self, hours: int, scheduled: bool) -> None:
        self.now += timedelta(hours=hours)
        if scheduled:
            renewal.renew_due(self.sessions, now=self.now, chunk=2)
            for model in self.models.values():
                model.renew(self.now)

    @invariant()
    def matches_the_model(self) -> None:
        with session_scope(self.sessions) as s:
            balances = {b.account_id: b for b in s.execute(select(Balance)).scalars()}
            plans = {a.id: (a.plan_code, a.pending_plan_code)
                     for a in s.execute(select(Account)).scalars()}
            profiles = Counter(s.execute(select(ClientProfile.account_id, ClientProfile.source)))
            charges = Counter(s.execute(select(LedgerEntry.account_id).where(
                LedgerEntry.kind.in_(["charge", "unlimited_usage"]))).scalars())
            assert ledger.verify(s) == []
            assert s.execute(select(func.count()).select_from(ClientProfile)).scalar_one() == \
                sum(sum(m.profiles.values()) for m in self.models.values())
        for account_id, model in self.models.items():
            # the model renews where the domain does: at the next operation on the
            # balance, or in the scheduled renewal; so they agree even while one is due
            balance = balances[account_id]
            assert (balance.monthly_remaining, balance.extra_remaining) == (
                model.monthly, model.extra), account_id
            assert plans[account_id] == (model.plan, model.pending), account_id
            assert balance.unlimited == (PLANS[model.plan] is None), account_id
            assert balance.monthly_remaining >= 0 and balance.extra_remaining >= 0
            assert charges[account_id] == model.charges
            for source in ("manual", "website", "funnel"):
                assert profiles[(account_id, source)] == model.profiles[source]


def _run(new_database: Callable[[], tuple[str, Callable[[], None]]], examples: int,
         steps: int) -> None:
    machine = type("DomainOn", (Domain,), {"new_database": staticmethod(new_database)})
    run_state_machine_as_test(machine, settings=settings(  # type: ignore[arg-type]
        max_examples=examples, stateful_step_count=steps, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))


def test_the_domain_follows_its_model_on_sqlite(sqlite_template: Path) -> None:
    def new_database() -> tuple[str, Callable[[], None]]:
        folder = Path(tempfile.mkdtemp(prefix="cc_sm_"))
        shutil.copy(sqlite_template, folder / "db.sqlite")
        return f"sqlite:///{folder / 'db.sqlite'}", lambda: shutil.rmtree(folder)

    _run(new_database, examples=30, steps=30)


@pytest.mark.postgres
def test_the_domain_follows_its_model_on_postgres(pg_url: str) -> None:
    """``pg_url`` makes sure PostgreSQL answers; each example gets a database of its own."""

    def new_database() -> tuple[str, Callable[[], None]]:
        name = f"cc_sm{next(_ids)}_{services.RUN_ID}_{os.getpid()}"
        services.admin(f'CREATE DATABASE "{name}" TEMPLATE "{PG_TEMPLATE}"')
        return services.pg_url(name), lambda: services.drop_database(name)

    _run(new_database, examples=6, steps=30)
