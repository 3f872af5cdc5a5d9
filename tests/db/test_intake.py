"""R1, R2 and R6 through the intake functions: idempotency, refusals, invalid input."""

from __future__ import annotations

from sqlalchemy import func, select

from db import intake
from db.engine import session_scope
from db.models import ClientProfile, Event, LedgerEntry
from schemas.common import Bucket, Channel, Status
from tests.conftest import at
from tests.factories import balance_of, create, manual_payload, setup_account

NOW = at("2026-11-10T12:00:00")


def count(factory, model, *where):
    with session_scope(factory) as s:
        return s.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def test_the_same_message_again_returns_its_first_outcome(factory):
    setup_account(factory, "a", monthly=3, now=NOW)
    payload = manual_payload("a", "req-1")
    first = create(factory, payload, now=NOW, message_id="msg-1")
    again = create(factory, payload, now=NOW, message_id="msg-1")
    assert again.status is Status.created and again.event_id == first.event_id
    assert again.charged_bucket is Bucket.monthly
    assert count(factory, ClientProfile) == 1
    assert count(factory, LedgerEntry, LedgerEntry.kind == "charge") == 1


def test_the_same_request_in_other_messages_is_a_duplicate_of_the_first(factory):
    setup_account(factory, "a", monthly=3, now=NOW)
    payload = manual_payload("a", "req-1")
    first = create(factory, payload, now=NOW, message_id="msg-1")
    dupes = [create(factory, payload, now=NOW, message_id=f"msg-{i}") for i in (2, 3)]
    assert {d.status for d in dupes} == {Status.duplicate}
    assert {d.duplicate_of for d in dupes} == {first.event_id}
    assert {d.profile_id for d in dupes} == {first.profile_id}
    assert all(d.charged_bucket is None for d in dupes)
    assert balance_of(factory, "a") == (2, 0)


def test_request_ids_are_per_account(factory):
    setup_account(factory, "a", monthly=3, now=NOW)
    setup_account(factory, "b", monthly=3, now=NOW)
    assert create(factory, manual_payload("a", "same"), now=NOW).status is Status.created
    assert create(factory, manual_payload("b", "same"), now=NOW).status is Status.created


def test_a_refused_request_can_be_retried_after_buying(factory):
    setup_account(factory, "a", monthly=0, now=NOW)
    payload = manual_payload("a", "req-1")
    refused = create(factory, payload, now=NOW)
    assert refused.status is Status.refused and count(factory, ClientProfile) == 0
    assert count(factory, LedgerEntry, LedgerEntry.kind == "charge") == 0
    from db import ledger

    with session_scope(factory) as s:
        ledger.purchase(s, purchase_id="p", account_id="a", quantity=1, amount_cents=900,
                        now=NOW)
    created = create(factory, payload, now=NOW)
    assert created.status is Status.created and created.charged_bucket is Bucket.extra
    with session_scope(factory) as s:
        statuses = sorted(s.execute(select(Event.status)).scalars())
    assert statuses == ["created", "refused"]


def test_an_unknown_account_is_refused_and_recorded(factory):
    outcome = create(factory, manual_payload("ghost"), now=NOW)
    assert (outcome.status, outcome.reason) == (Status.refused, "unknown_account")
    assert count(factory, Event, Event.status == "refused") == 1


def test_profile_carries_source_and_event(factory):
    setup_account(factory, "a", monthly=3, now=NOW)
    outcome = create(factory, manual_payload("a", email="Ada@Example.COM",
                                             phone="(415) 555-2671"), now=NOW)
    with session_scope(factory) as s:
        profile = s.get(ClientProfile, outcome.profile_id)
        assert profile is not None
        assert (profile.source, profile.event_id) == ("manual", outcome.event_id)
        assert (profile.email, profile.phone) == ("ada@example.com", "+14155552671")


def test_invalid_input_is_kept_with_its_errors(factory):
    raw = {"request_id": "r", "account_id": "a", "client": {"first_name": ""}}
    with session_scope(factory) as s:
        outcome = intake.record_invalid(s, channel=Channel.manual, raw=raw,
                                        errors=[{"loc": ["client"], "msg": "bad"}],
                                        message_id="m", now=NOW)
    with session_scope(factory) as s:
        event = s.get(Event, outcome.event_id)
        assert event is not None and event.status == "invalid"
        assert event.raw_body is not None and '"request_id": "r"' in event.raw_body
        assert event.errors == [{"loc": ["client"], "msg": "bad"}]


def test_a_redelivered_refusal_is_recorded_once(factory):
    setup_account(factory, "a", monthly=0, now=NOW)
    payload = manual_payload("a", "req-1")
    first = create(factory, payload, now=NOW, message_id="msg-1")
    again = create(factory, payload, now=NOW, message_id="msg-1")
    assert (again.status, again.event_id) == (Status.refused, first.event_id)
    assert count(factory, Event) == 1


def test_a_redelivered_invalid_message_is_recorded_once(factory):
    raw = {"request_id": "r", "account_id": "a"}
    with session_scope(factory) as s:
        first = intake.record_invalid(s, channel=Channel.manual, raw=raw, errors=[],
                                      message_id="m", now=NOW)
    with session_scope(factory) as s:
        again = intake.record_invalid(s, channel=Channel.manual, raw=raw, errors=[],
                                      message_id="m", now=NOW)
    assert again.event_id == first.event_id and count(factory, Event) == 1
