"""Events in, outcomes out: R1, R2 and R6.

A manual creation is charged and stored in one transaction, behind the
account's balance lock, so a profile never exists without its charge and two
deliveries of one request cannot both charge. Leads are stored first by the
HTTP receiver (the inbox) and turned into free profiles here.

A refused or invalid manual creation keeps no idempotency key: once the agent
has bought credits (or the main app has fixed the message) the same
``request_id`` may be sent again and is then processed afresh.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import Engine, TextClause, bindparam, insert, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from db import lead_inbox, ledger
from db.engine import driver_transaction, session_scope
from db.errors import NotFound
from db.models import ClientProfile, Event, Source
from schemas.common import FINAL_STATUSES, Bucket, Channel, Status
from schemas.leads import LeadProfile
from schemas.messages import CreateManualProfile, ProfileOutcome, Remaining

#: refusal reasons
INSUFFICIENT_CREDITS = "insufficient_credits"
UNKNOWN_ACCOUNT = "unknown_account"


def new_id(prefix: str) -> str:
    """``<prefix>_`` and 128 random bits in hex (a quarter of ``uuid4().hex``'s cost)."""
    return f"{prefix}_{secrets.token_hex(16)}"


def manual_key(account_id: str, request_id: str) -> str:
    return f"manual:{account_id}:{request_id}"


def hook_key(source_id: str, webhook_id: str) -> str:
    return f"hook:{source_id}:{webhook_id}"


@dataclass(slots=True)
class Outcome:
    """How an event ended; ``message()`` is what goes on ``profile_outcomes``."""

    event_id: str
    account_id: str
    request_id: str
    status: Status
    source: str
    profile_id: str | None = None
    charged_bucket: Bucket | None = None
    reason: str | None = None
    duplicate_of: str | None = None
    remaining: Remaining | None = None
    errors: list[Any] | None = None
    profile: dict[str, Any] | None = field(default=None)

    def message(self) -> ProfileOutcome:
        return ProfileOutcome(
            account_id=self.account_id, request_id=self.request_id, event_id=self.event_id,
            status=self.status, source=self.source, profile_id=self.profile_id,
            charged_bucket=self.charged_bucket, reason=self.reason,
            duplicate_of=self.duplicate_of, remaining=self.remaining, profile=self.profile,
        )


def outcome_of(event: Event, *, duplicate: bool = False) -> Outcome:
    """The outcome recorded on ``event``; as a ``duplicate`` pointing at it when asked."""
    return Outcome(
        event_id=event.id, account_id=event.account_id,
        request_id=(event.external_id or event.id) if event.channel == Channel.manual else event.id,
        status=Status.duplicate if duplicate else Status(event.status), source=event.channel,
        profile_id=event.profile_id,
        charged_bucket=None if duplicate or not event.charged_bucket
        else Bucket(event.charged_bucket),
        reason=event.reason, duplicate_of=event.id if duplicate else None,
        errors=event.errors,
    )


#: the one-by-one path's statements, run on the session's connection, with the values
#: as parameters (compiled once)
_CLAIM: dict[str, Any] = {
    name: dialect_insert(Event).on_conflict_do_nothing().returning(Event.id)
    for name, dialect_insert in (("postgresql", pg_insert), ("sqlite", sqlite_insert))}
_ADD_PROFILE = insert(ClientProfile)
_MARK_CREATED = (update(Event).where(Event.id == bindparam("event_id"))
                 .values(status=Status.created.value, profile_id=bindparam("profile_id"),
                         charged_bucket=bindparam("bucket")))
#: a refusal lets go of the request's key, so that it may come again (R6)
_REFUSE = (update(Event).where(Event.id == bindparam("event_id"))
           .values(status=Status.refused.value, reason=bindparam("reason"), dedupe_key=None))


def recorded(session: Session, message_id: str | None) -> Event | None:
    """The event a broker message already recorded, if any: it was delivered again
    after its outcome committed (a worker killed before the ack, a failed publish)."""
    if message_id is None:
        return None
    return session.execute(
        select(Event).where(Event.message_id == message_id)).scalar_one_or_none()


def create_manual_profile(session: Session, msg: CreateManualProfile, *,
                          message_id: str | None, now: datetime) -> Outcome:
    """Store a manual profile and charge one credit for it, or refuse (R1, R2, R6).

    The same message delivered again returns the first outcome unchanged; the
    same request in another message returns ``duplicate``.

    Behind the balance lock, the event row claims the request's key and the
    message id (both unique): a message delivered again, or a second message of
    the request, finds the first, even one that waited for the lock while the
    first committed. Then the charge, the profile, and the event's outcome. The
    worker takes :func:`create_manual_batch`, which does all of it in one statement
    on PostgreSQL and leaves this path the rare cases.
    """
    conn = session.connection()
    outcome = Outcome(event_id=new_id("evt"), account_id=msg.account_id,
                      request_id=msg.request_id, status=Status.refused,
                      source=Channel.manual.value)
    key = manual_key(msg.account_id, msg.request_id)
    profile = _profile_row(msg, outcome.event_id, now)
    event = {"id": outcome.event_id, "account_id": msg.account_id,
             "channel": Channel.manual.value, "dedupe_key": key,
             "external_id": msg.request_id, "message_id": message_id,
             "status": Status.received.value, "payload": _redacted_manual(msg),
             "received_at": now, "processed_at": now, "attempts": 1}
    claim = _CLAIM["postgresql" if conn.dialect.name == "postgresql" else "sqlite"]
    try:
        ledger.lock_balance(session, msg.account_id, now)
    except NotFound:
        if conn.execute(claim, {**event, "dedupe_key": None, "status": Status.refused.value,
                                "reason": UNKNOWN_ACCOUNT}).scalar_one_or_none() is None:
            return _seen_before(session, key, message_id)
        outcome.reason = UNKNOWN_ACCOUNT
        return outcome
    if conn.execute(claim, event).scalar_one_or_none() is None:
        return _seen_before(session, key, message_id)
    result = ledger.charge(session, msg.account_id, event_id=outcome.event_id, now=now)
    if result.bucket is None:
        return _refuse(session, outcome, INSUFFICIENT_CREDITS, remaining=Remaining(
            monthly_remaining=result.monthly_remaining, extra_remaining=result.extra_remaining,
            renews_at=result.renews_at))
    conn.execute(_ADD_PROFILE, profile)
    conn.execute(_MARK_CREATED, {"event_id": outcome.event_id, "profile_id": profile["id"],
                                 "bucket": result.bucket.value})
    return _created(outcome, profile["id"], result.bucket)


def create_manual_batch(sessions: sessionmaker[Session],
                        batch: Sequence[tuple[CreateManualProfile, str | None]], *,
                        now: datetime) -> list[Outcome]:
    """Several manual creations, each with its broker message id, committed together.

    Each ends as :func:`create_manual_profile` would end it, run alone in the
    batch's order: a second message of a request in the batch finds the first
    one's claim, the second creation on an account sees the first one's charge.
    Like :func:`db.renewal.renew_due`, this runs its own transactions.

    On PostgreSQL one statement (:data:`_CREATE_MANUAL_BATCH`), on a pooled
    connection of its own, does the work of the batch in one transaction: it
    locks the balances in account order (so batches that share accounts cannot
    deadlock; the scheduled renewal skips locked rows), claims every event,
    takes the credits and writes the entries and profiles; refusals then let go
    of their keys (:data:`_RELEASE`, in the same transaction and the same round
    trip: :func:`_in_one_round_trip`). What it leaves goes one by one in a second
    transaction: a request or message that comes twice in the batch (the
    second), an account that does not exist or is due a renewal. Should any
    claim fail (a redelivery, a request seen before), the statement fails, so
    that nothing of it is written, and the whole batch goes one by one. On
    SQLite they all go one by one, in one transaction.
    """
    engine = sessions.kw["bind"]
    outcomes: dict[int, Outcome] = {}
    if engine.dialect.name == "postgresql":
        first: list[int] = []
        seen: set[Any] = set()
        for i, (msg, message_id) in enumerate(batch):
            keys = {("r", msg.account_id, msg.request_id)} | (
                {("m", message_id)} if message_id is not None else set())
            if not keys & seen:
                seen |= keys
                first.append(i)
        outcomes = _in_one_round_trip(engine, [(i, *batch[i]) for i in first], now) or {}
    rest = [i for i in range(len(batch)) if i not in outcomes]
    if rest:
        with session_scope(sessions) as session:
            outcomes.update(zip(rest, _one_by_one(session, batch, rest, now), strict=True))
    return [outcomes[i] for i in range(len(batch))]


def _in_one_round_trip(engine: Engine,
                       items: list[tuple[int, CreateManualProfile, str | None]],
                       now: datetime) -> dict[int, Outcome] | None:
    """:func:`_create_batch` on a pooled connection, without an ORM session (which cost
    more CPU than the statement): committed, or None when a claim failed (then
    nothing of it was written, and the connection goes back to the pool)."""
    with driver_transaction(engine, autocommit=True) as driver:
        try:
            return _create_batch(driver, items, now)
        except psycopg.errors.InvalidTextRepresentation as exc:
            if _CLAIM_FAILED not in str(exc):
                raise
            return None


def _one_by_one(session: Session, batch: Sequence[tuple[CreateManualProfile, str | None]],
                indexes: Sequence[int], now: datetime) -> list[Outcome]:
    """:func:`create_manual_profile` for ``batch[i]``, each ``i`` of ``indexes``, in
    account order; the outcomes in the order of ``indexes``."""
    outcomes: dict[int, Outcome] = {}
    for i in sorted(indexes, key=lambda i: (batch[i][0].account_id, i)):
        msg, message_id = batch[i]
        outcomes[i] = create_manual_profile(session, msg, message_id=message_id, now=now)
    return [outcomes[i] for i in indexes]


def _compact(sql: str) -> str:
    """The statement on one line: psycopg caches its parse of statements up to 4 KiB."""
    return " ".join(sql.split())


#: every claim of the batch held
_GATE = "(SELECT count(*) FROM claim) = (SELECT count(*) FROM decided)"
#: the text of the error :data:`_CREATE_MANUAL_BATCH` fails with when a claim did not
#: hold (SQL has no ``RAISE`` outside a function: casting it to an integer fails, and a
#: statement that fails has written nothing)
_CLAIM_FAILED = "a claim of the batch did not hold"
#: the input of :data:`_CREATE_MANUAL_BATCH`: one JSON array of rows, one parameter
_BATCH_COLUMNS = {
    "n": "int", "event_id": "text", "account_id": "text", "dedupe_key": "text",
    "request_id": "text", "message_id": "text", "payload": "json", "profile_id": "text",
    "first_name": "text", "last_name": "text", "email": "text", "phone": "text",
    "date_of_birth": "date", "state": "text", "extra": "json", "created_by": "text"}

#: PostgreSQL: a batch of manual creations in one statement (see
#: :func:`create_manual_batch`). The events are claimed as ``created`` or
#: ``refused`` as decided; the balances, entries and profiles are written only
#: if every claim held (``gate``), and the statement fails if one did not. One
#: row per event of a locked account.
_CREATE_MANUAL_BATCH = text(_compact("""WITH input AS MATERIALIZED (
    SELECT * FROM json_to_recordset(CAST(:rows AS json)) AS t(""" + ", ".join(  # noqa: S608
        f"{name} {kind}" for name, kind in _BATCH_COLUMNS.items()) + """)
),""" + ledger.charge_batch_ctes(after_decide="""
claim AS (
    INSERT INTO events (id, account_id, channel, dedupe_key, external_id, message_id, status,
                        payload, profile_id, charged_bucket, reason, attempts, received_at,
                        processed_at)
    SELECT event_id, account_id, :channel, dedupe_key, request_id, message_id,
           CASE WHEN bucket IS NULL THEN :refused ELSE :created END, payload,
           CASE WHEN bucket IS NULL THEN NULL ELSE profile_id END, bucket,
           CASE WHEN bucket IS NULL THEN :reason END, 1, :now, :now
    FROM decided ORDER BY n
    ON CONFLICT DO NOTHING
    RETURNING id
),""", gate=_GATE) + f"""
, profile AS (
    INSERT INTO client_profiles (id, account_id, source, event_id, first_name, last_name, email,
                                 phone, date_of_birth, state, extra, created_by, created_at)
    SELECT profile_id, account_id, :channel, event_id, first_name, last_name, email, phone,
           date_of_birth, state, extra, created_by, :now
    FROM decided WHERE bucket IS NOT NULL AND ({_GATE})
)
SELECT n, bucket, monthly_after, extra_after, period_end,
       CAST(CASE WHEN {_GATE} THEN NULL ELSE '{_CLAIM_FAILED}' END AS int) AS gate_held
FROM decided
"""))  # noqa: S608 (only code's own fragments go in)
#: the refusals of a batch let go of their keys (run after the statement, which they
#: cannot see from inside it); ``ids`` are all of the batch's events
_RELEASE = text("UPDATE events SET dedupe_key = NULL"
                " WHERE id = ANY(CAST(:ids AS text[])) AND status = :refused")


def _create_batch(driver: psycopg.Connection[Any],
                  items: list[tuple[int, CreateManualProfile, str | None]],
                  now: datetime) -> dict[int, Outcome]:
    """:data:`_CREATE_MANUAL_BATCH` then :data:`_RELEASE` for ``items`` (index, message,
    message id), whose requests and message ids are distinct; the outcome of each
    item it decided, by index.

    ``driver`` is in autocommit, and both statements go in one pipeline: the server
    runs what comes before the pipeline's one sync as one implicit transaction
    (committed at the sync, or rolled back whole if a statement fails), in one
    round trip where ``BEGIN``, the statement and ``COMMIT`` took three (four with a
    refusal).
    """
    rows_in: list[dict[str, Any]] = []
    by_n: dict[int, tuple[int, Outcome]] = {}
    for n, (i, msg, message_id) in enumerate(items, start=1):
        outcome = Outcome(event_id=new_id("evt"), account_id=msg.account_id,
                          request_id=msg.request_id, status=Status.created,
                          source=Channel.manual.value, profile_id=new_id("prf"))
        by_n[n] = (i, outcome)
        client = msg.client
        rows_in.append({
            "n": n, "event_id": outcome.event_id, "account_id": msg.account_id,
            "dedupe_key": manual_key(msg.account_id, msg.request_id),
            "request_id": msg.request_id, "message_id": message_id,
            "payload": _redacted_manual(msg), "profile_id": outcome.profile_id,
            "first_name": client.first_name, "last_name": client.last_name,
            "email": client.email, "phone": client.phone,
            "date_of_birth": client.date_of_birth.isoformat() if client.date_of_birth else None,
            "state": client.state, "extra": dict(client.extra), "created_by": msg.created_by})
    cursor: psycopg.Cursor[Any] = driver.cursor(row_factory=namedtuple_row)
    with driver.pipeline():
        cursor.execute(_pyformat(_CREATE_MANUAL_BATCH), {
            "rows": json.dumps(rows_in),
            "accounts": sorted({msg.account_id for _, msg, _ in items}),
            "channel": Channel.manual.value, "refused": Status.refused.value,
            "created": Status.created.value, "reason": INSUFFICIENT_CREDITS, "now": now})
        # never prepared: when the statement before it fails, the server skips this one,
        # and psycopg (3.3.9) would still take it for prepared and name it next time
        driver.execute(_pyformat(_RELEASE), {
            "ids": [row["event_id"] for row in rows_in], "refused": Status.refused.value},
            prepare=False)
    rows = cursor.fetchall()
    decided: dict[int, Outcome] = {}
    for row in rows:
        i, outcome = by_n[row.n]
        if row.bucket is None:
            outcome.status, outcome.profile_id = Status.refused, None
            outcome.reason = INSUFFICIENT_CREDITS
            outcome.remaining = Remaining(monthly_remaining=row.monthly_after,
                                          extra_remaining=row.extra_after,
                                          renews_at=row.period_end.astimezone(UTC))
        else:
            outcome.charged_bucket = Bucket(row.bucket)
        decided[i] = outcome
    return decided


@cache
def _pyformat(statement: TextClause) -> str:
    """A statement as psycopg takes it (``%(name)s`` parameters), compiled once."""
    return str(statement.compile(dialect=postgresql.psycopg.dialect()))


def _profile_row(msg: CreateManualProfile, event_id: str, now: datetime) -> dict[str, Any]:
    client = msg.client
    return {"id": new_id("prf"), "account_id": msg.account_id, "source": Channel.manual.value,
            "event_id": event_id, "first_name": client.first_name,
            "last_name": client.last_name, "email": client.email, "phone": client.phone,
            "date_of_birth": client.date_of_birth, "state": client.state,
            "extra": dict(client.extra), "created_by": msg.created_by, "created_at": now}


def _seen_before(session: Session, key: str, message_id: str | None) -> Outcome:
    """Why a claim did not hold: this very message was recorded before (a redelivery:
    its first outcome), or another message of the request was (``duplicate``)."""
    seen = recorded(session, message_id)
    if seen is not None:
        return outcome_of(seen)
    existing = session.execute(select(Event).where(Event.dedupe_key == key)).scalar_one()
    return outcome_of(existing, duplicate=existing.message_id != message_id)


def _created(outcome: Outcome, profile_id: str, bucket: Bucket) -> Outcome:
    outcome.status, outcome.profile_id, outcome.charged_bucket = (
        Status.created, profile_id, bucket)
    return outcome


def _refuse(session: Session, outcome: Outcome, reason: str,
            remaining: Remaining | None) -> Outcome:
    """Record a refusal on the claimed event and let go of its key (R6)."""
    session.connection().execute(_REFUSE, {"event_id": outcome.event_id, "reason": reason})
    outcome.status, outcome.reason, outcome.remaining = Status.refused, reason, remaining
    return outcome


def _redacted_manual(msg: CreateManualProfile) -> dict[str, Any]:
    """The message as stored on the event: the profile itself lives in its own row."""
    return {"request_id": msg.request_id, "account_id": msg.account_id,
            "created_by": msg.created_by, "occurred_at": msg.occurred_at.isoformat()}


def record_invalid(session: Session, *, channel: Channel, raw: Any, errors: list[Any],
                   message_id: str | None, now: datetime,
                   source_id: str | None = None) -> Outcome:
    """Keep a message that failed validation, with its errors and its raw body."""
    seen = recorded(session, message_id)
    if seen is not None:
        return outcome_of(seen)
    account_id = raw.get("account_id") if isinstance(raw, dict) else None
    request_id = raw.get("request_id") if isinstance(raw, dict) else None
    event = Event(id=new_id("evt"), account_id=str(account_id or "")[:128],
                  channel=channel.value, source_id=source_id,
                  external_id=str(request_id)[:200] if request_id is not None else None,
                  message_id=message_id, status=Status.invalid.value, reason="invalid_message",
                  raw_body=_dump(raw), errors=errors, received_at=now, processed_at=now,
                  attempts=1)
    session.add(event)
    session.flush()
    return outcome_of(event)


def _dump(raw: Any) -> str:
    if isinstance(raw, str | bytes):
        return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    try:
        return json.dumps(raw, default=str)
    except (TypeError, ValueError):
        return repr(raw)


# -- leads ----------------------------------------------------------------------------

def lead_row(*, source_id: str, account_id: str, channel: str, webhook_id: str,
             raw_body: str, content_type: str, lead: LeadProfile | None,
             errors: list[Any] | None, now: datetime) -> dict[str, Any]:
    """A webhook as an ``events`` row (:data:`db.lead_inbox.EVENT_COLUMNS`): ``received``
    with its mapped lead, or ``invalid`` with its errors."""
    return {
        "id": new_id("evt"), "account_id": account_id, "channel": channel,
        "source_id": source_id, "dedupe_key": hook_key(source_id, webhook_id),
        "external_id": webhook_id,
        "status": Status.received.value if lead is not None else Status.invalid.value,
        "reason": None if lead is not None else "invalid_lead",
        "payload": lead.model_dump(mode="json") if lead is not None else None,
        "raw_body": raw_body, "content_type": content_type, "errors": errors, "attempts": 0,
        "received_at": now, "processed_at": None if lead is not None else now,
    }


def record_lead(session: Session, source: Source | lead_inbox.SourceRow, *, webhook_id: str,
                raw_body: str, content_type: str, lead: LeadProfile | None,
                errors: list[Any] | None, now: datetime) -> tuple[Event, bool]:
    """Store a webhook as an event row before anything else (the inbox).

    The web process stores concurrent webhooks together (:mod:`db.lead_inbox`);
    this is the one-at-a-time path, and the one that finds a known webhook-id.

    :returns: the event and whether it is new; a known ``webhook-id`` of this
        source returns the first event and stores nothing.
    """
    row = lead_row(source_id=source.id, account_id=source.account_id, channel=source.kind,
                   webhook_id=webhook_id, raw_body=raw_body, content_type=content_type,
                   lead=lead, errors=errors, now=now)
    inserted = lead_inbox.record_leads(session.connection(), [row])
    event = session.execute(
        select(Event).where(Event.dedupe_key == row["dedupe_key"])).scalar_one()
    return event, bool(inserted)


def ingest_lead(session: Session, event_id: str, *, now: datetime) -> Outcome | None:
    """Turn a stored lead into a free profile whose source is its channel (R1).

    :returns: None when the event is missing or already done (a no-op).
    """
    event = session.execute(
        select(Event).where(Event.id == event_id).with_for_update()
    ).scalar_one_or_none()
    if event is None or event.status in FINAL_STATUSES:
        return None
    lead = LeadProfile.model_validate(event.payload or {})
    profile = ClientProfile(
        id=new_id("prf"), account_id=event.account_id, source=event.channel,
        source_id=event.source_id, event_id=event.id, first_name=lead.first_name,
        last_name=lead.last_name, email=lead.email, phone=lead.phone,
        date_of_birth=lead.date_of_birth, state=lead.state, extra=dict(lead.extra),
        created_by=None, created_at=now)
    session.add(profile)
    event.status = Status.created.value
    event.profile_id = profile.id
    event.processed_at = now
    event.attempts += 1
    session.flush()
    outcome = outcome_of(event)
    outcome.profile = lead.model_dump(mode="json")
    return outcome


def mark_failed(session: Session, event_id: str, *, reason: str, now: datetime) -> Event | None:
    """Record that an event exhausted its retries (it is dead-lettered)."""
    event = session.execute(
        select(Event).where(Event.id == event_id).with_for_update()
    ).scalar_one_or_none()
    if event is None or event.status in FINAL_STATUSES:
        return event
    event.status = Status.failed.value
    event.reason = reason[:200]
    event.processed_at = now
    session.flush()
    return event


def get_event(session: Session, account_id: str, event_id: str) -> Event:
    event = session.get(Event, event_id)
    if event is None or event.account_id != account_id:
        raise NotFound(f"no event {event_id!r} for account {account_id!r}")
    return event


def record_failed_manual(session: Session, raw: Any, *, reason: str, message_id: str | None,
                         now: datetime) -> Outcome | None:
    """Record a manual creation that exhausted its retries, unless it did succeed."""
    if not isinstance(raw, dict):
        return None
    account_id, request_id = str(raw.get("account_id", "")), str(raw.get("request_id", ""))
    if recorded(session, message_id) is not None:
        return None
    existing = session.execute(
        select(Event).where(Event.dedupe_key == manual_key(account_id, request_id))
    ).scalar_one_or_none()
    if existing is not None:
        return None
    event = Event(id=new_id("evt"), account_id=account_id[:128], channel=Channel.manual.value,
                  external_id=request_id[:200], message_id=message_id,
                  status=Status.failed.value, reason=reason[:200], received_at=now,
                  processed_at=now, attempts=1)
    session.add(event)
    session.flush()
    return outcome_of(event)
