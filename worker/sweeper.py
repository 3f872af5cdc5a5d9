"""The inbox sweeper: send ``ingest_lead`` again for leads whose message was lost.

:mod:`db.sweeper` finds the leads still ``received`` after ``SWEEP_AFTER_S``
seconds (see there why only leads wait in the inbox). Before sending one
again, the sweeper looks in Redis: a lead whose message is queued, held by a
worker, or waiting for a retry is left alone (a long backlog is not a loss), and
one whose message is dead-lettered is left to ``casecredits dlq replay``. Every
other one is enqueued again. A lead sent twice is still one profile:
``ingest_lead`` skips an event that is done.

It runs from the scheduler every ``SWEEP_EVERY_S`` seconds (:func:`sweep_job`)
and from ``casecredits events sweep``. Each page of ``SWEEP_BATCH`` leads is
read in its own short transaction; a run reads at most :data:`MAX_PAGES` pages
and the next run goes on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db import sweeper
from db.engine import session_scope
from schemas.messages import QUEUE_LEADS, IngestLead
from worker.logs import get_logger

log = get_logger(__name__)

#: pages a run reads at most
MAX_PAGES = 20
#: hash entries asked for per HSCAN call
SCAN_COUNT = 1_000


@dataclass(slots=True)
class SweepReport:
    older_than_s: int
    checked: int = 0
    enqueued: list[str] = field(default_factory=list)
    #: leads whose message Redis still holds (queued, in flight, or waiting to retry)
    in_broker: int = 0
    #: leads whose message is dead-lettered; ``dlq replay`` sends those
    dead_lettered: int = 0

    def view(self) -> dict[str, Any]:
        return {"older_than_s": self.older_than_s, "checked": self.checked,
                "enqueued": len(self.enqueued), "in_broker": self.in_broker,
                "dead_lettered": self.dead_lettered}


@dataclass(frozen=True, slots=True)
class Held:
    """Event ids of the ``ingest_lead`` messages Redis holds."""

    pending: frozenset[str]
    dead: frozenset[str]


def _event_ids(client: redis.Redis, key: str) -> set[str]:
    ids: set[str] = set()
    for _, raw in client.hscan_iter(key, count=SCAN_COUNT):
        try:
            data = json.loads(raw)
            payload = data["args"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            continue
        if data.get("actor_name") == "ingest_lead" and isinstance(payload, dict):
            ids.add(str(payload.get("event_id")))
    return ids


def held_in(client: redis.Redis, namespace: str) -> Held:
    """What Redis holds for the lead queue: queued or in flight, delayed, and dead.

    A fetched message stays in ``{queue}.msgs`` until it is acknowledged, so
    the messages that workers hold (a killed worker's too) count as pending.

    :raises redis.RedisError: when Redis does not answer.
    """
    base = f"{namespace}:{QUEUE_LEADS}"
    pending = _event_ids(client, f"{base}.DQ.msgs") | _event_ids(client, f"{base}.msgs")
    return Held(pending=frozenset(pending), dead=frozenset(_event_ids(client, f"{base}.XQ.msgs")))


def ingest_message(event_id: str) -> Message[Any]:
    payload = IngestLead(event_id=event_id).model_dump(mode="json")
    return Message(queue_name=QUEUE_LEADS, actor_name="ingest_lead", args=(payload,),
                   kwargs={}, options={})


def sweep(sessions: sessionmaker[Session], broker: RedisBroker, *, older_than_s: int,
          batch: int, now: datetime,
          send: Callable[[Message[Any]], Any] | None = None) -> SweepReport:
    """Enqueue ``ingest_lead`` for every lead left ``received`` for ``older_than_s`` seconds.

    :param send: how a message goes out; ``broker.enqueue`` by default.
    :raises redis.RedisError: when Redis does not answer (nothing is lost: the
        leads stay in the inbox for the next run).
    :raises sqlalchemy.exc.SQLAlchemyError: when the database does not answer.
    """
    send = send or broker.enqueue
    report = SweepReport(older_than_s=older_than_s)
    before = now - timedelta(seconds=older_than_s)
    held: Held | None = None
    after: sweeper.Waiting | None = None
    for _ in range(MAX_PAGES):
        with session_scope(sessions) as session:
            page = sweeper.waiting_leads(session, received_before=before, limit=batch,
                                         after=after)
        if not page:
            break
        held = held or held_in(broker.client, broker.namespace)
        for lead in page:
            report.checked += 1
            if lead.event_id in held.pending:
                report.in_broker += 1
            elif lead.event_id in held.dead:
                report.dead_lettered += 1
            else:
                send(ingest_message(lead.event_id))
                report.enqueued.append(lead.event_id)
        if len(page) < batch:
            break
        after = page[-1]
    if report.checked:
        log.info("sweep.done", **report.view())
    return report


def sweep_job() -> None:
    """The scheduler's job: one sweep with the settings; a failure waits for the next run."""
    from worker import broker as broker_mod
    from worker import runtime
    from worker.settings import get_settings

    settings = get_settings()
    try:
        sweep(runtime.sessions(), broker_mod.setup(), older_than_s=settings.sweep_after_s,
              batch=settings.sweep_batch, now=runtime.now())
    except (redis.RedisError, SQLAlchemyError) as exc:
        log.warning("sweep.failed", error=type(exc).__name__,
                    retry_in_s=settings.sweep_every_s)
