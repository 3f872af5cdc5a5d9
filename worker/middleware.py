"""Middleware: a log context per message, and the record of a message that failed."""

from __future__ import annotations

from typing import Any

import structlog
from dramatiq.middleware import Middleware

from worker.logs import get_logger

log = get_logger(__name__)


class BindLogContext(Middleware):
    """Bind the actor name and message id to every log line of a message."""

    def before_process_message(self, broker: Any, message: Any) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(actor=message.actor_name,
                                               message_id=message.message_id,
                                               retries=message.options.get("retries", 0))

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                              exception: BaseException | None = None) -> None:
        structlog.contextvars.clear_contextvars()

    after_skip_message = after_process_message


class RecordFailure(Middleware):
    """When a message is dead-lettered, record the event as ``failed`` and say why.

    Runs after ``Retries`` has decided: ``message.failed`` is then final.
    """

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                              exception: BaseException | None = None) -> None:
        if exception is None or not message.failed:
            return
        from worker import deadletters, handlers

        reason = deadletters.reason_of(exception)  # never the values the message carried
        log.error("message.dead_lettered", actor=message.actor_name,
                  message_id=message.message_id, reason=reason[:500],
                  retries=message.options.get("retries", 0))
        deadletters.remember(broker, message.message_id, reason)  # for `dlq list`
        try:
            handlers.on_dead_letter(message.actor_name, message.args, message.message_id,
                                    reason=reason, exception=exception)
        except Exception:  # the database may be the reason it failed
            log.exception("message.dead_letter_record_failed", message_id=message.message_id)
