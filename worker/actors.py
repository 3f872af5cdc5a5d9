"""The actors. Thin: each hands its one argument to a handler.

``dramatiq worker.actors`` (the Procfile's ``worker`` line) imports this module,
which sets up the broker, the logs and the actors.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage

from schemas.messages import QUEUE_ACCOUNTS, QUEUE_LEADS, QUEUE_PROFILES, QUEUE_RENEWALS
from worker import broker, handlers, logs
from worker.settings import get_settings

logs.configure(fmt=get_settings().log_format, level=get_settings().log_level)
broker.setup()


def _message_id() -> str | None:
    message = CurrentMessage.get_current_message()
    return message.message_id if message is not None else None


@dramatiq.actor(queue_name=QUEUE_PROFILES, throws=broker.PERMANENT_ERRORS)
def create_manual_profile(payload: Any) -> None:
    """A profile created by hand in the main app: one credit, or a refusal."""
    handlers.create_manual_profile(payload, message_id=_message_id())


@dramatiq.actor(queue_name=QUEUE_LEADS, throws=broker.PERMANENT_ERRORS)
def ingest_lead(payload: Any) -> None:
    """A stored webhook lead (``{"event_id": ...}``): a free profile."""
    handlers.ingest_lead(payload, message_id=_message_id())


@dramatiq.actor(queue_name=QUEUE_ACCOUNTS, throws=broker.PERMANENT_ERRORS)
def upsert_account(payload: Any) -> None:
    """Create an account or change its plan and time zone (R7)."""
    handlers.upsert_account(payload, message_id=_message_id())


@dramatiq.actor(queue_name=QUEUE_ACCOUNTS, throws=broker.PERMANENT_ERRORS)
def purchase_credits(payload: Any) -> None:
    """Extra credits bought by an agent, once per purchase id (R4)."""
    handlers.purchase_credits(payload, message_id=_message_id())


@dramatiq.actor(queue_name=QUEUE_RENEWALS, throws=broker.PERMANENT_ERRORS)
def renew_monthly_credits(payload: Any = None) -> None:
    """Renew every account whose period has ended (R3)."""
    handlers.renew_monthly_credits(payload, message_id=_message_id())
