"""The inbox: store a webhook as an event row and commit, then hand its id to the worker.

The order is the guarantee. An event is answered ``202`` only once its row is
committed; the ``ingest_lead`` message goes out after the commit, and if it
cannot (Redis down) the event stays ``received`` in the inbox, where the
sweeper finds it and sends it again. A message that arrives twice is harmless:
``ingest_lead`` skips an event that is done.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from dramatiq.brokers.redis import RedisBroker

from api.batching import Batcher
from db import intake, lead_inbox
from db.engine import session_scope
from db.lead_inbox import SourceRow
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
#: write batches in flight at once: two, so that one's round trips overlap the other's
WRITE_BATCHES = 2
#: the actor the worker runs for a stored lead
INGEST_ACTOR = "ingest_lead"


@dataclass(frozen=True, slots=True)
class Stored:
    event_id: str
    status: str
    #: False when this source had the webhook-id already: nothing was written
    new: bool
    #: whether the stored body is the one just received (a true resend)
    same_body: bool
    errors: list[dict[str, Any]] | None


@dataclass(frozen=True, slots=True)
class Incoming:
    """A webhook that passed its checks, to be stored."""

    source: SourceRow
    webhook_id: str
    raw_body: str
    #: the request's Content-Type header, cut to what the column holds
    content_type: str
    lead: LeadProfile | None
    errors: list[dict[str, Any]] | None


class SourceChanged(Exception):
    """The source a webhook was checked against changed before its event was stored
    (disabled, new secret or token): check it again against the source as it is now."""


class Inbox:
    """The web process's inbox: the sources webhooks name, and their writes.

    Sources are remembered between requests, but only to check a webhook early:
    the write of its event reads the source again, in the transaction that
    stores it, and stores nothing unless the source is still the one the
    webhook was checked against (enabled, same secrets, same token). Otherwise
    the request is checked again against the source as it is now (410 for a
    disabled source, 401 for a rotated-out token), and so is any request a
    remembered source refuses. An unknown source is never remembered.

    Writes of concurrent requests are grouped into one thread hop, one
    transaction and one commit (:mod:`api.batching`), and the ``ingest_lead``
    messages of a batch are sent together after the commit.
    """

    #: sources remembered at most; beyond, the memory starts afresh
    MAX_KNOWN = 10_000

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self._known: dict[str, SourceRow] = {}
        self._lookups: Batcher[str, SourceRow | None] = Batcher(find_sources,
                                                                name="source-lookups")
        self._writes: Batcher[Incoming, Stored] = Batcher(
            self.store_all, name="inbox-writes", concurrency=WRITE_BATCHES)

    def close(self) -> None:
        self._lookups.close()
        self._writes.close()

    async def find_source(self, source_id: str, *, fresh: bool = False
                          ) -> tuple[SourceRow | None, bool]:
        """The source named in a webhook URL, or None, and whether it was read just now.

        :param fresh: read it from the database even when it is remembered.
        """
        known = None if fresh else self._known.get(source_id)
        if known is not None:
            return known, False
        source = await self._lookups.submit(source_id)
        if source is None:
            self._known.pop(source_id, None)
        else:
            if len(self._known) >= self.MAX_KNOWN:
                self._known.clear()
            self._known[source_id] = source
        return source, True

    async def store(self, incoming: Incoming) -> Stored:
        """Store and commit the webhook, then send it to the worker if it waits.

        :raises SourceChanged: when the source is no longer the one checked.
        :raises sqlalchemy.exc.OperationalError: when the database does not answer
            or the commit fails; nothing is acknowledged then.
        """
        return await self._writes.submit(incoming)

    def store_all(self, batch: Sequence[Incoming]) -> list[Stored | BaseException]:
        """Write a batch of webhooks in one transaction and commit; one result each.

        Each row is written only if its source is still the one it was checked
        against (:meth:`db.lead_inbox.InboxWrite.record_checked`, in the same
        statement on PostgreSQL): a webhook whose source changed gets
        :class:`SourceChanged` and writes nothing. A webhook-id stored before (or
        twice in the batch) is then looked up one at a time, as :func:`store` does.
        After the commit, the new events are logged in one line (``inbox.committed``,
        with their ids and sources), and those that wait for the worker are sent in
        one round trip; a failed send only logs.

        :raises sqlalchemy.exc.OperationalError: when a statement or the commit
            fails: every webhook of the batch is refused then.
        """
        now = runtime.now()
        rows = [intake.lead_row(
            source_id=item.source.id, account_id=item.source.account_id,
            channel=item.source.kind, webhook_id=item.webhook_id, raw_body=item.raw_body,
            content_type=item.content_type, lead=item.lead, errors=item.errors, now=now)
            for item in batch]
        with lead_inbox.transaction(runtime.engine()) as tx:
            written, changed = tx.record_checked(
                [(item.source, row) for item, row in zip(batch, rows, strict=True)])
        results: list[Stored | BaseException] = []
        for item, row in zip(batch, rows, strict=True):
            if row["id"] in changed:
                results.append(SourceChanged(item.source.id))
            elif row["id"] in written:
                results.append(Stored(event_id=row["id"], status=row["status"], new=True,
                                      same_body=True, errors=item.errors))
            else:
                try:
                    results.append(store(item))
                except Exception as exc:  # this request alone answers the error
                    results.append(exc)
        stored = [(item, r) for item, r in zip(batch, results, strict=True)
                  if isinstance(r, Stored) and r.new]
        if stored:  # a line a batch: one a request cost the web as much as the signature
            log.info("inbox.committed", events=len(stored),
                     event_ids=[r.event_id for _, r in stored],
                     source_ids=sorted({item.source.id for item, _ in stored}))
        self.producer.send_ingests([r.event_id for r in results
                                    if isinstance(r, Stored) and needs_sending(r)])
        return results


def find_sources(source_ids: Sequence[str]) -> list[SourceRow | None]:
    """The sources of a batch of webhook URLs, in one query; None for an unknown id."""
    with lead_inbox.transaction(runtime.engine()) as tx:
        found = tx.find_sources(source_ids)
    return [found.get(source_id) for source_id in source_ids]


def store(incoming: Incoming) -> Stored:
    """Write one webhook (``received``, or ``invalid`` without a lead) and commit.

    :raises sqlalchemy.exc.OperationalError: when the database does not answer;
        nothing is acknowledged then.
    """
    with session_scope(runtime.sessions()) as session:
        event, new = intake.record_lead(
            session, incoming.source, webhook_id=incoming.webhook_id,
            raw_body=incoming.raw_body, content_type=incoming.content_type,
            lead=incoming.lead, errors=incoming.errors, now=runtime.now())
        stored = Stored(event_id=event.id, status=event.status, new=new,
                        same_body=event.raw_body == incoming.raw_body, errors=event.errors)
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

    def send_ingests(self, event_ids: Sequence[str]) -> int:
        """Enqueue ``ingest_lead`` for each event, in one round trip to Redis
        (:func:`worker.broker.enqueue_many`).

        :returns: how many were sent: all, or none (with a warning for each; the
            events are committed and the sweeper sends them again).
        """
        if not event_ids:
            return 0
        try:
            broker_mod.enqueue_many(self.broker(), QUEUE_LEADS, INGEST_ACTOR, [
                IngestLead(event_id=event_id).model_dump(mode="json") for event_id in event_ids])
        except Exception as exc:  # the events are committed; the sweeper will resend them
            for event_id in event_ids:
                log.warning("lead.enqueue_failed", event_id=event_id, error=type(exc).__name__)
            return 0
        return len(event_ids)

    def close(self) -> None:
        with self._lock:
            if self._broker is not None:
                self._broker.client.close()
                self._broker = None


def needs_sending(stored: Stored) -> bool:
    """A new lead, or one sent before whose message may have been lost."""
    return stored.status == Status.received.value
