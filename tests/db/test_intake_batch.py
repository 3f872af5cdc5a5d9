"""Manual creations in batches (one transaction, the group commit of the worker):
each ends as it would one by one, on SQLite and on PostgreSQL (one statement)."""

from __future__ import annotations

import itertools
from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from db import intake, ledger
from db.engine import make_engine, make_session_factory, session_scope
from db.intake import Outcome
from db.models import ClientProfile, Event, LedgerEntry
from schemas.common import Bucket, Status
from schemas.messages import CreateManualProfile
from tests.conftest import at
from tests.factories import balance_of, create, manual_payload, setup_account

NOW = at("2026-11-10T12:00:00")
_ids = itertools.count()


def batch(factory: sessionmaker[Session], items: list[tuple[dict, str]], *,
          now: datetime = NOW) -> list[Outcome]:
    msgs = [(CreateManualProfile.model_validate(p), mid) for p, mid in items]
    return intake.create_manual_batch(factory, msgs, now=now)


def count(factory, model, *where) -> int:
    with session_scope(factory) as s:
        return s.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def verified(factory) -> None:
    with session_scope(factory) as s:
        assert ledger.verify(s) == []


def test_a_batch_charges_in_order_and_refuses_what_it_cannot_pay(factory, db_url, monkeypatch):
    alone: list[int] = []
    one_by_one = intake._one_by_one

    def spy(session, items, indexes, now):
        alone.extend(indexes)
        return one_by_one(session, items, indexes, now)

    monkeypatch.setattr(intake, "_one_by_one", spy)
    setup_account(factory, "a", plan="two", monthly=2, extra=1, now=NOW)
    setup_account(factory, "u", plan="unl", unlimited=True, now=NOW)
    setup_account(factory, "z", plan="none", monthly=0, now=NOW)
    outcomes = batch(factory, [
        (manual_payload("a", "r1"), "m1"), (manual_payload("u", "x1"), "m2"),
        (manual_payload("a", "r2"), "m3"), (manual_payload("z", "z1"), "m4"),
        (manual_payload("a", "r3"), "m5"), (manual_payload("a", "r4"), "m6"),
        (manual_payload("ghost", "g1"), "m7"), (manual_payload("a", "r1"), "m8"),
    ])
    got = [(o.account_id, o.request_id, o.status, o.charged_bucket, o.reason)
           for o in outcomes]
    assert got == [
        ("a", "r1", Status.created, Bucket.monthly, None),
        ("u", "x1", Status.created, Bucket.unlimited, None),
        ("a", "r2", Status.created, Bucket.monthly, None),
        ("z", "z1", Status.refused, None, "insufficient_credits"),
        ("a", "r3", Status.created, Bucket.extra, None),
        ("a", "r4", Status.refused, None, "insufficient_credits"),
        ("ghost", "g1", Status.refused, None, "unknown_account"),
        ("a", "r1", Status.duplicate, None, None),
    ]
    assert outcomes[-1].duplicate_of == outcomes[0].event_id
    # PostgreSQL: one statement for the batch; alone only the unknown account and the
    # second message of a request
    assert sorted(alone) == ([6, 7] if db_url.startswith("postgresql") else list(range(8)))
    assert outcomes[5].remaining is not None
    assert (outcomes[5].remaining.monthly_remaining,
            outcomes[5].remaining.extra_remaining) == (0, 0)
    assert balance_of(factory, "a") == (0, 0)
    assert count(factory, ClientProfile) == 4
    assert count(factory, LedgerEntry, LedgerEntry.event_id.is_not(None)) == 4
    with session_scope(factory) as s:
        profile = s.get(ClientProfile, outcomes[0].profile_id)
        assert profile is not None and profile.event_id == outcomes[0].event_id
        assert (profile.first_name, profile.source) == ("Ada", "manual")
        event = s.get(Event, outcomes[2].event_id)
        assert event is not None and (event.status, event.charged_bucket) == ("created",
                                                                              "monthly")
    verified(factory)
    # a refused request keeps no key: bought credits, it goes through
    with session_scope(factory) as s:
        ledger.purchase(s, purchase_id="p", account_id="a", quantity=1, amount_cents=900,
                        now=NOW)
    again = batch(factory, [(manual_payload("a", "r4"), "m9"),
                            (manual_payload("z", "z1"), "m10")])
    assert [(o.status, o.charged_bucket) for o in again] == [
        (Status.created, Bucket.extra), (Status.refused, None)]
    verified(factory)


def test_a_request_or_message_seen_before_ends_as_alone(factory):
    setup_account(factory, "a", monthly=5, now=NOW)
    setup_account(factory, "b", monthly=5, now=NOW)
    first = create(factory, manual_payload("a", "old"), now=NOW, message_id="m-old")
    outcomes = batch(factory, [
        (manual_payload("b", "new-1"), "m1"),
        (manual_payload("a", "old"), "m2"),  # a second message of a created request
        (manual_payload("a", "old"), "m-old"),  # the first message, delivered again
        (manual_payload("a", "new-2"), "m3"),
    ])
    assert [o.status for o in outcomes] == [Status.created, Status.duplicate, Status.created,
                                            Status.created]
    assert outcomes[1].duplicate_of == first.event_id
    assert outcomes[2].event_id == first.event_id
    assert count(factory, Event) == 3  # nothing left of the claims taken back
    assert balance_of(factory, "a") == (3, 0) and balance_of(factory, "b") == (4, 0)
    verified(factory)


def test_a_batch_renews_an_account_whose_month_has_ended(factory):
    setup_account(factory, "a", monthly=2, now=at("2026-10-10T12:00:00"))
    setup_account(factory, "b", monthly=2, now=NOW)
    create(factory, manual_payload("a", "october"), now=at("2026-10-10T12:00:00"))
    outcomes = batch(factory, [(manual_payload("a", "r1"), "m1"),
                               (manual_payload("b", "r1"), "m2"),
                               (manual_payload("a", "r2"), "m3")])
    assert [(o.status, o.charged_bucket) for o in outcomes] == [
        (Status.created, Bucket.monthly)] * 3
    assert balance_of(factory, "a") == (0, 0) and balance_of(factory, "b") == (1, 0)
    assert count(factory, LedgerEntry, LedgerEntry.kind == "grant",
                 LedgerEntry.account_id == "a") == 2
    verified(factory)


def test_the_batch_statement_finds_balances_by_key_not_by_scanning(pg_url):
    """With thousands of accounts, every plan of the statement (the first ones, and
    the generic one a prepared statement gets after five runs) reads the batch's
    balances through the primary key: a scan of the table would cost each batch
    time in proportion to the number of accounts."""
    engine = make_engine(pg_url)
    factory = make_session_factory(engine)
    setup_account(factory, "a", monthly=50, now=NOW)
    with engine.begin() as conn:  # 5,000 more accounts on the plan of "a", with no credits
        conn.execute(text("""
            INSERT INTO accounts (id, plan_code, pending_plan_code, timezone, changed_at,
                                  created_at, updated_at)
            SELECT 'filler-' || g, plan_code, NULL, timezone, changed_at, created_at, updated_at
            FROM accounts, generate_series(1, 5000) AS g WHERE id = 'a'"""))
        conn.execute(text("""
            INSERT INTO balances (account_id, period, period_start, period_end,
                                  monthly_allowance, unlimited, monthly_used,
                                  monthly_remaining, extra_remaining, unlimited_used, updated_at)
            SELECT 'filler-' || g, period, period_start, period_end, monthly_allowance,
                   unlimited, 0, 0, 0, 0, updated_at
            FROM balances, generate_series(1, 5000) AS g WHERE account_id = 'a'"""))
        conn.execute(text("ANALYZE accounts"))
        conn.execute(text("ANALYZE balances"))
    engine.dispose()
    plans: list[str] = []

    @event.listens_for(engine, "connect")
    def _explain_every_statement(dbapi_conn, _record):  # the server sends each plan
        dbapi_conn.add_notice_handler(lambda diag: plans.append(diag.message_primary or ""))
        dbapi_conn.execute("LOAD 'auto_explain'")
        dbapi_conn.execute("SET auto_explain.log_min_duration = 0")
        dbapi_conn.execute("SET auto_explain.log_level = notice")
        dbapi_conn.commit()

    for run in range(8):
        outcomes = batch(factory, [(manual_payload(account, f"r{run}"), f"m{run}-{account}")
                                   for account in ("a", "filler-7", "filler-4096")])
        assert [o.status for o in outcomes] == [Status.created, Status.refused,
                                                Status.refused]
    engine.dispose()
    batch_plans = [p for p in plans if "Insert on client_profiles" in p]
    assert len(batch_plans) == 8
    assert not [p for p in batch_plans if "Seq Scan on balances" in p]
    assert all(p.count("pk_balances") == 2 for p in batch_plans)  # locked, and charged
    verified(factory)


def test_the_batch_and_its_release_commit_together_or_not_at_all(pg_url, monkeypatch):
    """PostgreSQL: the statement and the release of the refusals' keys are one
    transaction (one pipeline, one sync): when the release fails, the charges,
    events and profiles of the statement before it are not written either."""
    engine = make_engine(pg_url)
    factory = make_session_factory(engine)
    setup_account(factory, "a", monthly=1, now=NOW)
    monkeypatch.setattr(intake, "_RELEASE", text(
        "UPDATE events SET dedupe_key = NULL WHERE id = ANY(CAST(:ids AS text[]))"
        " AND status = :refused AND 1 / (SELECT count(*) - count(*) FROM events) = 1"))
    with pytest.raises(DBAPIError, match="division by zero"):
        batch(factory, [(manual_payload("a", "r1"), "m1"), (manual_payload("a", "r2"), "m2")])
    assert count(factory, Event) == 0 and count(factory, ClientProfile) == 0
    assert balance_of(factory, "a") == (1, 0)
    monkeypatch.undo()
    outcomes = batch(factory, [(manual_payload("a", "r1"), "m1"), (manual_payload("a", "r2"),
                                                                    "m2")])
    assert [o.status for o in outcomes] == [Status.created, Status.refused]
    verified(factory)
    engine.dispose()


def test_claims_that_fail_keep_the_connection_good_and_pooled(pg_url):
    """The statement fails on purpose when a claim does not hold. Its connection goes
    back to the pool (a new one costs milliseconds) and still works, however often
    that happens: past psycopg's threshold for preparing the statements it runs."""
    engine = make_engine(pg_url, pool_size=1)
    factory = make_session_factory(engine)
    setup_account(factory, "a", monthly=20, now=NOW)
    create(factory, manual_payload("a", "old"), now=NOW, message_id="m-old")
    connects: list[object] = []
    event.listen(engine, "connect", lambda conn, _record: connects.append(conn))
    invalidated: list[object] = []
    event.listen(engine, "invalidate", lambda conn, _record, _exc: invalidated.append(conn))
    for run, again in enumerate([False] * 5 + [True, False] + [True] * 3 + [False]):
        items = [(manual_payload("a", f"new-{run}"), f"m{run}")]
        if again:  # the first message of "old", delivered again
            items.append((manual_payload("a", "old"), "m-old"))
        outcomes = batch(factory, items)
        assert [o.status for o in outcomes] == [Status.created] * len(items)
    assert invalidated == [] and connects == []
    assert count(factory, Event) == 12
    verified(factory)
    engine.dispose()


# -- property: a batch is the same as one by one ------------------------------------------

ACCOUNTS = {"m2": dict(monthly=2), "m1x2": dict(monthly=1, extra=2), "zero": dict(monthly=0),
            "unl": dict(unlimited=True)}
#: (account, request) pairs, and how the sequence is cut into batches
steps = st.lists(st.tuples(st.sampled_from(sorted(ACCOUNTS)), st.integers(0, 4)),
                 min_size=1, max_size=14)
cuts = st.lists(st.integers(1, 6), min_size=1, max_size=14)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=steps, cuts=cuts, resend=st.booleans())
def test_batches_end_every_creation_as_one_by_one(factory, steps, cuts, resend):
    """The same creations on twin accounts, in batches and one by one, end the same:
    status, bucket, and what is left; then both ledgers verify."""
    run = next(_ids)
    for name, terms in ACCOUNTS.items():
        for twin in ("batch", "single"):
            setup_account(factory, f"{twin}-{run}-{name}", plan=f"plan-{name}", now=NOW,
                          **terms)  # type: ignore[arg-type]

    def items(twin: str) -> list[tuple[dict, str]]:
        out = [(manual_payload(f"{twin}-{run}-{name}", f"req-{r}"), f"{twin}-{run}-m{i}")
               for i, (name, r) in enumerate(steps)]
        if resend:  # the first message delivered again at the end
            out.append(out[0])
        return out

    singles = [create(factory, p, now=NOW, message_id=mid) for p, mid in items("single")]
    batched: list[Outcome] = []
    todo = items("batch")
    for size in itertools.cycle(cuts):
        if not todo:
            break
        batched += batch(factory, todo[:size])
        del todo[:size]

    def shape(o: Outcome) -> tuple:
        left = (o.remaining.monthly_remaining, o.remaining.extra_remaining) \
            if o.remaining else None
        return o.status, o.charged_bucket, o.reason, left

    assert [shape(o) for o in batched] == [shape(o) for o in singles]
    for name in ACCOUNTS:
        assert balance_of(factory, f"batch-{run}-{name}") == \
            balance_of(factory, f"single-{run}-{name}")
    verified(factory)
