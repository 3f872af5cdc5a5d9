"""The dramatiq broker: Redis from ``REDIS_URL``, or the embedded one under ``var/``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message
from dramatiq.middleware import CurrentMessage, Middleware, Retries, TimeLimit

from db.errors import DomainError
from worker import embedded
from worker.settings import Settings, get_settings


class InvalidMessage(Exception):
    """A message whose payload does not fit its schema; never retried."""


#: errors that retrying cannot fix: they fail the message at once (dead letter)
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (InvalidMessage, DomainError)


def redis_url(settings: Settings) -> str:
    """The broker's URL, starting the embedded redis-server when none is configured."""
    if settings.redis_url:
        return settings.redis_url
    return embedded.ensure_running(settings.var_dir)


def _retry_when(retries: int, exc: BaseException) -> bool:
    return not isinstance(exc, PERMANENT_ERRORS) and retries < get_settings().max_retries


def build_broker(settings: Settings | None = None) -> RedisBroker:
    """A Redis broker with our retry policy and the middleware the actors need."""
    from worker.middleware import BindLogContext, RecordFailure

    settings = settings or get_settings()
    # dramatiq runs the ``after_*`` hooks in reverse order: RecordFailure must
    # come before Retries to see its verdict, BindLogContext first to unbind last.
    # Of dramatiq's defaults, only what our actors use: no message sets max_age,
    # callbacks, a pipeline or notify_shutdown, and each middleware's hooks run for
    # every message.
    middleware: list[Any] = [
        BindLogContext(), RecordFailure(), TimeLimit(time_limit=600_000),
        Retries(min_backoff=settings.min_backoff_ms, max_backoff=settings.max_backoff_ms,
                retry_when=_retry_when),
        CurrentMessage(),
    ]
    if settings.worker_metrics:  # dramatiq's exposition server, port 9191
        from dramatiq.middleware.prometheus import Prometheus

        middleware.append(Prometheus())
    broker = RedisBroker(url=redis_url(settings), middleware=middleware,
                         namespace=settings.broker_namespace,
                         heartbeat_timeout=settings.heartbeat_timeout_ms,
                         dead_message_ttl=settings.dead_message_ttl_ms,
                         maintenance_chance=settings.maintenance_chance)
    return broker


def setup() -> RedisBroker:
    """Build the broker and make it dramatiq's global one (idempotent)."""
    current = dramatiq.get_broker() if _has_broker() else None
    if isinstance(current, RedisBroker):
        return current
    broker = build_broker()
    dramatiq.set_broker(broker)
    return broker


def _has_broker() -> bool:
    import dramatiq.broker as b

    return getattr(b, "global_broker", None) is not None


def publish(queue_name: str, actor_name: str, payload: dict[str, Any]) -> None:
    """Send a message to an actor we do not run (``profile_outcome``, the main app's)."""
    publish_many(queue_name, actor_name, [payload])


def publish_many(queue_name: str, actor_name: str, payloads: list[dict[str, Any]]) -> None:
    """:func:`publish` each payload, in one round trip to Redis (:func:`enqueue_many`)."""
    enqueue_many(dramatiq.get_broker(), queue_name, actor_name, payloads)


def enqueue_many(broker: dramatiq.Broker, queue_name: str, actor_name: str,
                 payloads: Sequence[dict[str, Any]]) -> list[Message[Any]]:
    """Enqueue a message to ``actor_name`` for each payload, in one round trip to Redis.

    The messages are stored where ``RedisBroker.enqueue`` stores them (its
    ``dispatch`` script's ``enqueue``: the message under a Redis id of its own
    in the queue's ``.msgs`` hash, that id at the end of the queue's list), all
    of them in one ``MULTI``/``EXEC``, so that a consumer sees all or none and
    no script has to be loaded. The broker's maintenance and heartbeat, which
    ``dispatch`` also does, run on the consumers' own fetches and acks. This
    leans on the storage layout of the pinned dramatiq (2.2.1);
    ``tests/worker/test_broker.py`` checks that a consumer gets what this sends.

    :returns: the messages sent.
    """
    sent: list[Message[Any]] = [
        Message(queue_name=queue_name, actor_name=actor_name, args=(payload,), kwargs={},
                message_id=_uuid_text(), options={"redis_message_id": _uuid_text()})
        for payload in payloads]
    if not isinstance(broker, RedisBroker):
        return [broker.enqueue(message) for message in sent]
    if not sent:
        return sent
    hooked = _enqueue_hooked(broker)
    if hooked:
        for message in sent:
            broker.emit_before("enqueue", message, None)
    queue = f"{broker.namespace}:{queue_name}"
    ids = [message.options["redis_message_id"] for message in sent]
    with broker.client.pipeline(transaction=True) as pipe:
        pipe.hset(f"{queue}.msgs", mapping={
            redis_id: message.encode() for redis_id, message in zip(ids, sent, strict=True)})
        pipe.rpush(queue, *ids)
        pipe.execute()
    if hooked:
        for message in sent:
            broker.emit_after("enqueue", message, None)
    return sent


def _uuid_text() -> str:
    """128 random bits in the text form of a UUID, as dramatiq's ids are written, at a
    third of ``str(uuid4())``'s cost (no UUID object; version bits not set)."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _enqueue_hooked(broker: dramatiq.Broker) -> bool:
    """Whether any middleware of the broker does something on ``enqueue`` (none of the
    worker's do; calling each one's no-op hooks cost ~6 us a message)."""
    return any(getattr(type(m), hook) is not getattr(Middleware, hook)
               for m in broker.middleware for hook in ("before_enqueue", "after_enqueue"))
