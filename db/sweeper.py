"""The inbox sweeper's domain part: leads committed but not yet turned into profiles.

A webhook lead is committed as an ``events`` row with status ``received``
before the HTTP receiver answers 202, and only then is ``ingest_lead`` enqueued
with its id. If that message never arrives (Redis was down when the receiver
tried to send it, Redis restarted without persistence, a broker lost it) the
row waits in the inbox; :func:`waiting_leads` finds such rows by age, in
bounded pages, so that the worker side can enqueue them again. Sending twice is
harmless: ``ingest_lead`` locks the row and skips an event that is done.

Manual creations are never in the inbox. They have no row until a worker
processes their message, and then their profile, their charge and their event
are committed in one transaction (created, refused or invalid at once), so no
manual event is ever ``received``. A manual message lost with Redis left no
trace here; only the main application, which sent it, can send it again (the
same ``request_id`` is idempotent).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from db.models import Event
from schemas.common import Channel, Status

#: the channels whose events wait in the inbox
LEAD_CHANNELS = (Channel.website.value, Channel.funnel.value)


@dataclass(frozen=True, slots=True)
class Waiting:
    """A lead in the inbox: its id and when it was received (the paging key)."""

    event_id: str
    received_at: datetime


def waiting_leads(session: Session, *, received_before: datetime, limit: int,
                  after: Waiting | None = None) -> list[Waiting]:
    """Leads still ``received`` that came in before ``received_before``, oldest first.

    :param limit: most rows returned (one page).
    :param after: the last row of the previous page; the page starts after it.
    """
    query = (select(Event.id, Event.received_at)
             .where(Event.status == Status.received.value,
                    Event.channel.in_(LEAD_CHANNELS),
                    Event.received_at < received_before)
             .order_by(Event.received_at, Event.id).limit(limit))
    if after is not None:
        query = query.where(or_(Event.received_at > after.received_at,
                                and_(Event.received_at == after.received_at,
                                     Event.id > after.event_id)))
    return [Waiting(event_id=row[0], received_at=row[1]) for row in session.execute(query)]


def count_waiting(session: Session, *, received_before: datetime) -> int:
    """How many leads are ``received`` since before ``received_before``."""
    return int(session.execute(
        select(func.count()).select_from(Event)
        .where(Event.status == Status.received.value, Event.channel.in_(LEAD_CHANNELS),
               Event.received_at < received_before)).scalar_one())


def reopen_failed(session: Session, event_id: str) -> bool:
    """Put a dead-lettered lead back in the inbox, for a replay to finish it.

    A lead marked ``failed`` is done for ``ingest_lead``; this sets it back to
    ``received``. Anything else (missing, manual, not failed) is left as it is.

    :returns: whether the event was reopened.
    """
    event = session.execute(
        select(Event).where(Event.id == event_id).with_for_update()
    ).scalar_one_or_none()
    if (event is None or event.channel not in LEAD_CHANNELS
            or event.status != Status.failed.value):
        return False
    event.status = Status.received.value
    event.reason = None
    event.processed_at = None
    session.flush()
    return True
