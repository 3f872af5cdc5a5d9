"""Messages on the broker: what the main application sends, and what we publish.

Each message travels as one positional argument, a JSON object, so that the
main application needs nothing from this package to send one.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal, Self

from pydantic import AwareDatetime, Field, model_validator

from schemas.common import (
    CREDIT_PRICE_CENTS,
    Bucket,
    Email,
    ExtraMap,
    Identifier,
    Name,
    Phone,
    ShortText,
    Status,
    Strict,
    TimeZoneName,
)

#: queue names, part of the contract
QUEUE_PROFILES = "profiles"
QUEUE_ACCOUNTS = "accounts"
QUEUE_LEADS = "leads"
QUEUE_RENEWALS = "renewals"
QUEUE_OUTCOMES = "profile_outcomes"
#: the queues our worker consumes (``profile_outcomes`` is the main app's)
CONSUMED_QUEUES = (QUEUE_PROFILES, QUEUE_ACCOUNTS, QUEUE_LEADS, QUEUE_RENEWALS)


class ClientIn(Strict):
    """A client profile as the main application creates it by hand."""

    first_name: Name
    last_name: Name
    email: Email | None = None
    phone: Phone | None = None
    date_of_birth: date | None = None
    state: ShortText | None = None
    extra: ExtraMap = Field(default_factory=dict)


class CreateManualProfile(Strict):
    """Actor ``create_manual_profile`` on queue ``profiles``; costs one credit (R1)."""

    request_id: Identifier
    account_id: Identifier
    created_by: Identifier
    occurred_at: AwareDatetime
    client: ClientIn


class UpsertAccount(Strict):
    """Actor ``upsert_account`` on queue ``accounts``: create, or change plan and zone (R7)."""

    account_id: Identifier
    plan: Identifier
    timezone: TimeZoneName | None = None
    occurred_at: AwareDatetime


class PurchaseCredits(Strict):
    """Actor ``purchase_credits`` on queue ``accounts``; idempotent on ``purchase_id`` (R4)."""

    purchase_id: Identifier
    account_id: Identifier
    quantity: int = Field(ge=1, le=10_000)
    #: cents; must equal quantity x 900
    amount_cents: int
    occurred_at: AwareDatetime

    @model_validator(mode="after")
    def _amount_matches(self) -> Self:
        expected = self.quantity * CREDIT_PRICE_CENTS
        if self.amount_cents != expected:
            raise ValueError(
                f"amount_cents must be quantity x {CREDIT_PRICE_CENTS} = {expected}, "
                f"got {self.amount_cents}"
            )
        return self


class IngestLead(Strict):
    """Actor ``ingest_lead`` on queue ``leads``: the id of a stored webhook event."""

    event_id: Identifier


class RenewMonthlyCredits(Strict):
    """Actor ``renew_monthly_credits`` on queue ``renewals``; ``at`` defaults to now."""

    at: AwareDatetime | None = None


class Remaining(Strict):
    """What is left of an account's credits when a creation is refused."""

    monthly_remaining: int | None
    extra_remaining: int
    renews_at: datetime
    extra_credit_price_cents: int = CREDIT_PRICE_CENTS


class ProfileOutcome(Strict):
    """Actor ``profile_outcome`` on queue ``profile_outcomes``, consumed by the main app.

    For leads, ``request_id`` is the event id and ``profile`` carries the
    normalised profile so the main app learns of every new client.
    """

    account_id: str
    request_id: str
    event_id: str
    status: Literal[Status.created, Status.duplicate, Status.refused, Status.invalid,
                    Status.failed]
    source: str
    profile_id: str | None = None
    charged_bucket: Bucket | None = None
    reason: str | None = None
    duplicate_of: str | None = None
    remaining: Remaining | None = None
    profile: dict[str, object] | None = None
