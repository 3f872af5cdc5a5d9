"""What each actor does: parse the message, call one domain function, publish the outcome.

Kept apart from the actor declarations so that tests and the CLI can run the
same path without a broker.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from db import intake, ledger
from db.engine import session_scope
from db.intake import Outcome
from schemas.common import Channel, Status
from schemas.messages import (
    QUEUE_OUTCOMES,
    CreateManualProfile,
    IngestLead,
    PurchaseCredits,
    RenewMonthlyCredits,
    UpsertAccount,
)
from worker import broker as broker_mod
from worker import metrics, runtime
from worker.batching import GroupCommit
from worker.broker import InvalidMessage
from worker.logs import get_logger
from worker.settings import get_settings

log = get_logger(__name__)
M = TypeVar("M", bound=BaseModel)


def errors_of(exc: ValidationError) -> list[dict[str, Any]]:
    """Validation errors without the input values (they may be personal data)."""
    return [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_input=False, include_url=False)]


def parse(model: type[M], payload: Any, *, channel: Channel | None = None,
          message_id: str | None = None) -> M:
    """Validate ``payload`` or record it as invalid and raise :class:`InvalidMessage`."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        errors = errors_of(exc)
        if channel is not None:
            with session_scope(runtime.sessions()) as session:
                outcome = intake.record_invalid(session, channel=channel, raw=payload,
                                                errors=errors, message_id=message_id,
                                                now=runtime.now())
            if outcome.account_id and outcome.request_id != outcome.event_id:
                publish(outcome)
        log.warning("message.invalid", schema=model.__name__, errors=errors)
        raise InvalidMessage(f"{model.__name__} invalid: {errors}") from None


def publish(outcome: Outcome) -> None:
    """Send the outcome to the main application, after the commit that decided it."""
    broker_mod.publish(QUEUE_OUTCOMES, "profile_outcome",
                       outcome.message().model_dump(mode="json"))


def create_manual_profile(payload: Any, *, message_id: str | None) -> Outcome:
    """Parse, then create and publish together with what other threads of this process
    create meanwhile (one transaction, one round trip to Redis: :mod:`worker.batching`).
    A profile created is logged with its batch; any other outcome on a line of its own."""
    msg = parse(CreateManualProfile, payload, channel=Channel.manual, message_id=message_id)
    outcome = _manual_batches().submit((msg, message_id))
    if outcome.status is Status.created:
        metrics.count_outcome(outcome)
    else:
        _log_outcome(outcome)
    return outcome


def _create_manual_batch(batch: Sequence[tuple[CreateManualProfile, str | None]]
                         ) -> list[Outcome]:
    """The batch's creations, committed (:func:`db.intake.create_manual_batch`: one
    statement on PostgreSQL), then their outcomes in one round trip to Redis, then one
    line for the profiles created (``profiles.created``: a line a creation cost the
    worker 4 to 12% of its rate, measured in ``bench/RESULTS.md``, "Sixth session").
    The line is written by the thread that ran the batch, under its own message id."""
    outcomes = intake.create_manual_batch(runtime.sessions(), batch, now=runtime.now())
    broker_mod.publish_many(QUEUE_OUTCOMES, "profile_outcome",
                            [o.message().model_dump(mode="json") for o in outcomes])
    created = [(o, message_id) for o, (_, message_id) in zip(outcomes, batch, strict=True)
               if o.status is Status.created]
    if created:
        log.info("profiles.created", profiles=len(created),
                 event_ids=[o.event_id for o, _ in created],
                 message_ids=[message_id for _, message_id in created],
                 account_ids=[o.account_id for o, _ in created],
                 charged_buckets=[o.charged_bucket.value if o.charged_bucket else None
                                  for o, _ in created])
    return outcomes


@lru_cache(maxsize=1)
def _manual_batches() -> GroupCommit[tuple[CreateManualProfile, str | None], Outcome]:
    return GroupCommit(_create_manual_batch, max_size=get_settings().worker_batch_max)


def ingest_lead(payload: Any, *, message_id: str | None) -> Outcome | None:
    msg = parse(IngestLead, payload)
    with session_scope(runtime.sessions()) as session:
        outcome = intake.ingest_lead(session, msg.event_id, now=runtime.now())
    if outcome is None:
        log.info("lead.skipped", event_id=msg.event_id, why="missing or already done")
        return None
    _log_outcome(outcome)
    publish(outcome)
    return outcome


def upsert_account(payload: Any, *, message_id: str | None) -> None:
    msg = parse(UpsertAccount, payload)
    with session_scope(runtime.sessions()) as session:
        account = ledger.upsert_account(session, msg.account_id, plan_code=msg.plan,
                                        timezone=msg.timezone, occurred_at=msg.occurred_at,
                                        now=runtime.now())
        log.info("account.upserted", account_id=account.id, plan=account.plan_code,
                 pending_plan=account.pending_plan_code)


def purchase_credits(payload: Any, *, message_id: str | None) -> None:
    msg = parse(PurchaseCredits, payload)
    with session_scope(runtime.sessions()) as session:
        _, written = ledger.purchase(session, purchase_id=msg.purchase_id,
                                     account_id=msg.account_id, quantity=msg.quantity,
                                     amount_cents=msg.amount_cents, now=runtime.now())
    log.info("credits.purchased" if written else "credits.purchase_repeated",
             account_id=msg.account_id, purchase_id=msg.purchase_id, quantity=msg.quantity)


def renew_monthly_credits(payload: Any | None = None, *, message_id: str | None) -> int:
    from db import renewal

    msg = parse(RenewMonthlyCredits, payload or {})
    renewed = renewal.renew_due(runtime.sessions(), now=msg.at or runtime.now())
    log.info("renewal.done", renewed=renewed)
    return renewed


def _log_outcome(outcome: Outcome) -> None:
    log.info("event.outcome", event_id=outcome.event_id, account_id=outcome.account_id,
             channel=outcome.source, status=outcome.status.value,
             charged_bucket=outcome.charged_bucket.value if outcome.charged_bucket else None,
             reason=outcome.reason)
    metrics.count_outcome(outcome)


def on_dead_letter(actor_name: str, args: tuple[Any, ...], message_id: str, *, reason: str,
                   exception: BaseException) -> None:
    """Record the outcome of a message that exhausted its retries (status ``failed``)."""
    if isinstance(exception, InvalidMessage) or not args:
        return  # already recorded as invalid by ``parse``
    payload = args[0]
    now = runtime.now()
    if actor_name == "ingest_lead" and isinstance(payload, dict) and "event_id" in payload:
        with session_scope(runtime.sessions()) as session:
            event = intake.mark_failed(session, str(payload["event_id"]), reason=reason,
                                       now=now)
            outcome = intake.outcome_of(event) if event is not None else None
        if outcome is not None and outcome.status is Status.failed:
            publish(outcome)
    elif actor_name == "create_manual_profile":
        with session_scope(runtime.sessions()) as session:
            outcome = intake.record_failed_manual(session, payload, reason=reason,
                                                  message_id=message_id, now=now)
        if outcome is not None:
            publish(outcome)
