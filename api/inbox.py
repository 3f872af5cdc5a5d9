"""The inbox: store a webhook as an event row and commit, then hand its id to the worker.

The order is the guarantee. An event is answered ``202`` only once its row is
committed; the ``ingest_lead`` message goes out after the commit, and if it
cannot (Redis down) the event stays ``received`` in the inbox, where the
sweeper finds it and sends it again. A message that arrives twice is harmless:
``ingest_lead`` skips an event that is done.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

from db import intake
from db import sources as sources_db
from db.engine import session_scope
from db.models import Source
from schemas.common import Status
from schemas.leads import LeadProfile
from schemas.messages import QUEUE_LEADS, IngestLead
from worker import broker as broker_mod
from worker import runtime
from worker.logs import get_logger
from worker.settings import Settings

log = get_logger(__name__)

#: seconds to wait for Redis before giving up on a send (the event is safe anyway)
CONNECT_TIMEOUT_S = 2.0
SEND_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Stored:
    event_id: str
    status: str
    #: False when this source had the webhook-id already: nothing was written
    new: bool
    #: whether the stored body is the one just received (a true resend)
    same_body: bool
    errors: list[dict[str, Any]] | None


def find_source(source_id: str) -> Source | None:
    with session_scope(runtime.sessions()) as session:
        return sources_db.find(session, source_id)


def store(source: Source, *, webhook_id: str, raw_body: str, content_type: str,
          lead: LeadProfile | None, errors: list[dict[str, Any]] | None) -> Stored:
    """Write the event (``received``, or ``invalid`` without a lead) and commit.

    :raises sqlalchemy.exc.OperationalError: when the database does not answer;
        nothing is acknowledged then.
    """
    with session_scope(runtime.sessions()) as session:
        event, new = intake.record_lead(session, source, webhook_id=webhook_id,
                                        raw_body=raw_body, content_type=content_type[:200],
                                        lead=lead, errors=errors, now=runtime.now())
        stored = Stored(event_id=event.id, status=event.status, new=new,
                        same_body=event.raw_body == raw_body, errors=event.errors)
    return stored


class Producer:
    """Sends ``ingest_lead`` messages; connects to Redis on first use."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._broker: RedisBroker | None = None
        self._lock = threading.Lock()

    def broker(self) -> RedisBroker:
        with self._lock:
            if self._broker is None:
                client = redis.Redis.from_url(broker_mod.redis_url(self._settings),
                                              socket_connect_timeout=CONNECT_TIMEOUT_S,
                                              socket_timeout=SEND_TIMEOUT_S)
                # every broker runs dramatiq's maintenance with its own settings:
                # the worker's, so that this one never deletes dead letters early
                self._broker = RedisBroker(
                    client=client, middleware=[], namespace=self._settings.broker_namespace,
                    heartbeat_timeout=self._settings.heartbeat_timeout_ms,
                    maintenance_chance=self._settings.maintenance_chance,
                    dead_message_ttl=self._settings.dead_message_ttl_ms)
            return self._broker

    def ping(self) -> bool:
        try:
            return bool(self.broker().client.ping())
        except Exception:  # any failure to answer is "not ready"
            return False

    def send_ingest(self, event_id: str) -> bool:
        """Enqueue ``ingest_lead``; False (and a warning) when the broker does not take it."""
        payload = IngestLead(event_id=event_id).model_dump(mode="json")
        message: Message[Any] = Message(queue_name=QUEUE_LEADS, actor_name="ingest_lead",
                                        args=(payload,), kwargs={}, options={})
        try:
            self.broker().enqueue(message)
        except Exception as exc:  # the event is committed; the sweeper will resend it
            log.warning("lead.enqueue_failed", event_id=event_id, error=type(exc).__name__)
            return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._broker is not None:
                self._broker.client.close()
                self._broker = None


def needs_sending(stored: Stored) -> bool:
    """A new lead, or one sent before whose message may have been lost."""
    return stored.status == Status.received.value
