"""Dead letters: messages that exhausted their retries, why they died, and sending them again.

dramatiq's Redis broker keeps them per queue, seven days, in ``{ns}:{queue}.XQ``
(a sorted set of Redis message ids, scored by when they died) and
``{ns}:{queue}.XQ.msgs`` (Redis message id -> the message as it was enqueued).
It does not keep why they died: :class:`worker.middleware.RecordFailure` calls
:func:`remember`, which stores the reason in the hash ``{ns}:dead_reasons``
(message id -> JSON), and :func:`list_dead` prunes what no dead letter needs.

Nothing here reads a message's arguments into a log or a listing: a manual
creation carries a contact's personal data. A letter shows its reference
instead: the event id of a lead, or the account and request id of a creation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import q_name
from dramatiq.message import Message
from pydantic import ValidationError

from schemas.messages import CONSUMED_QUEUES
from worker.logs import get_logger, scrub

log = get_logger(__name__)

#: the hash of reasons, after the namespace
REASONS_KEY = "dead_reasons"
#: characters of a reason kept
MAX_REASON = 500
#: milliseconds a reason outlives its letter's absence (it is written before the nack)
REASON_GRACE_MS = 3_600_000
#: exception names that retrying cannot fix; ``replay --all`` leaves those letters alone
PERMANENT = frozenset({"InvalidMessage", "DomainError", "NotFound", "Conflict", "Rejected"})


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-lettered message, without its arguments."""

    queue: str
    #: the broker's own id of this copy (the key in ``.XQ.msgs``)
    redis_id: str
    message_id: str
    actor: str
    dead_at: datetime
    retries: int
    reason: str | None
    #: the lead's event id, or ``account_id/request_id`` of a creation, or None
    ref: str | None
    message: dict[str, Any]

    @property
    def permanent(self) -> bool:
        """Whether it died of an error that a replay would meet again."""
        return self.reason is not None and self.reason.split(":", 1)[0] in PERMANENT

    def view(self) -> dict[str, Any]:
        return {"queue": self.queue, "actor": self.actor, "message_id": self.message_id,
                "dead_at": self.dead_at.isoformat(), "retries": self.retries,
                "reason": self.reason, "permanent": self.permanent, "ref": self.ref}


def reason_of(exception: BaseException) -> str:
    """Why a message died, in one line and without the data it carried.

    A pydantic ``ValidationError`` prints the values it refused, so it is told
    by where it failed instead; anything else is scrubbed of emails and phones.
    """
    if isinstance(exception, ValidationError):
        where = sorted({".".join(str(p) for p in e["loc"]) or "(top)"
                        for e in exception.errors(include_input=False, include_url=False)})
        return f"ValidationError: {exception.error_count()} error(s) at {', '.join(where)}"
    return scrub(f"{type(exception).__name__}: {exception}")[:MAX_REASON]


def _reasons_key(namespace: str) -> str:
    return f"{namespace}:{REASONS_KEY}"


def remember(broker: Any, message_id: str, reason: str) -> None:
    """Store why ``message_id`` is being dead-lettered; never raises.

    :param broker: the worker's broker; anything but a Redis broker is ignored.
    """
    if not isinstance(broker, RedisBroker):
        return
    entry = json.dumps({"reason": scrub(reason)[:MAX_REASON], "at": int(time.time() * 1000)})
    try:
        broker.client.hset(_reasons_key(broker.namespace), message_id, entry)
    except redis.RedisError as exc:
        log.warning("dead_letter.reason_not_stored", message_id=message_id,
                    error=type(exc).__name__)


def _ref(actor: str, args: list[Any]) -> str | None:
    payload = args[0] if args else None
    if not isinstance(payload, dict):
        return None
    if actor == "ingest_lead" and "event_id" in payload:
        return str(payload["event_id"])[:128]
    if "account_id" in payload:
        key = payload.get("request_id") or payload.get("purchase_id")
        return f"{str(payload['account_id'])[:128]}/{str(key)[:200]}" if key else \
            str(payload["account_id"])[:128]
    return None


def list_dead(client: redis.Redis, namespace: str,
              queues: Iterable[str] = CONSUMED_QUEUES) -> list[DeadLetter]:
    """Every dead letter of ``queues``, oldest first; prunes reasons no letter needs."""
    reasons = {_text(k): json.loads(v)
               for k, v in client.hgetall(_reasons_key(namespace)).items()}  # type: ignore[union-attr]
    letters: list[DeadLetter] = []
    for queue in queues:
        xq = f"{namespace}:{queue}.XQ"
        scored: list[tuple[bytes, float]] = client.zrange(xq, 0, -1, withscores=True)  # type: ignore[assignment]
        if not scored:
            continue
        bodies = client.hmget(f"{xq}.msgs", [redis_id for redis_id, _ in scored])
        for (redis_id, score), body in zip(scored, bodies, strict=True):  # type: ignore[arg-type]
            if body is None:
                continue
            data = json.loads(body)
            message_id = str(data.get("message_id"))
            actor = str(data.get("actor_name"))
            reason = reasons.get(message_id, {}).get("reason")
            letters.append(DeadLetter(
                queue=queue, redis_id=_text(redis_id), message_id=message_id, actor=actor,
                dead_at=datetime.fromtimestamp(score / 1000, UTC),
                retries=int(data.get("options", {}).get("retries", 0)), reason=reason,
                ref=_ref(actor, list(data.get("args") or [])), message=data))
    _prune(client, namespace, reasons, {letter.message_id for letter in letters})
    return sorted(letters, key=lambda letter: letter.dead_at)


def _prune(client: redis.Redis, namespace: str, reasons: dict[str, Any],
           alive: set[str]) -> None:
    cutoff = int(time.time() * 1000) - REASON_GRACE_MS
    stale = [mid for mid, entry in reasons.items()
             if mid not in alive and int(entry.get("at", 0)) < cutoff]
    if stale:
        client.hdel(_reasons_key(namespace), *stale)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def find(letters: Iterable[DeadLetter], message_id: str) -> DeadLetter | None:
    return next((letter for letter in letters if letter.message_id == message_id), None)


def replay(broker: RedisBroker, letter: DeadLetter) -> Message[Any]:
    """Send ``letter`` again as a new message with the same arguments, then drop it.

    A new message, not a redelivery: the actors are idempotent on what the
    message names (a request id, a purchase id, an event id), so a letter
    replayed twice, or one whose work did get done, changes nothing more; while
    the record of the message that died (``failed``) stays as it was. It is
    enqueued before it is removed: a crash in between leaves it in both places,
    never in neither.
    """
    data = letter.message
    message: Message[Any] = Message(
        queue_name=q_name(str(data.get("queue_name") or letter.queue)), actor_name=letter.actor,
        args=tuple(data.get("args") or ()), kwargs=dict(data.get("kwargs") or {}),
        options={"replay_of": letter.message_id})
    sent = broker.enqueue(message)
    xq = f"{broker.namespace}:{letter.queue}.XQ"
    pipe = broker.client.pipeline()
    pipe.zrem(xq, letter.redis_id)
    pipe.hdel(f"{xq}.msgs", letter.redis_id)
    pipe.hdel(_reasons_key(broker.namespace), letter.message_id)
    pipe.execute()
    log.info("dead_letter.replayed", actor=letter.actor, message_id=letter.message_id,
             sent_as=sent.message_id, queue=letter.queue)
    return sent
