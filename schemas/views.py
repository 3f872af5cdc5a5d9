"""What the CLI (``--json``) and the read endpoints return."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel


class CreditsView(BaseModel):
    account_id: str
    plan: str
    #: a downgrade that takes effect at the next renewal
    pending_plan: str | None = None
    unlimited: bool
    #: "YYYY-MM" in the account's zone
    period: str
    timezone: str
    monthly_allowance: int | None
    monthly_remaining: int | None
    extra_remaining: int
    #: monthly + extra; null when unlimited
    total_available: int | None
    #: the next renewal instant, in UTC
    renews_at: datetime
    #: the same instant in the account's zone
    renews_at_local: datetime


class LedgerEntryView(BaseModel):
    id: int
    kind: str
    bucket: str
    amount: int
    period: str
    event_id: str | None
    reference: str | None
    reason: str | None
    actor: str | None
    monthly_after: int
    extra_after: int
    created_at: datetime


class LedgerPage(BaseModel):
    account_id: str
    entries: list[LedgerEntryView]
    #: pass as ``cursor`` for the next (older) page; null on the last page
    next_cursor: str | None


class EventView(BaseModel):
    event_id: str
    account_id: str
    status: str
    source: str
    profile_id: str | None
    charged_bucket: str | None
    reason: str | None
    errors: list[Any] | None = None
    received_at: datetime
    processed_at: datetime | None


class ProfileView(BaseModel):
    profile_id: str
    account_id: str
    source: str
    source_id: str | None
    event_id: str
    first_name: str | None
    last_name: str | None
    email: str | None
    phone: str | None
    date_of_birth: date | None
    state: str | None
    extra: dict[str, str]
    created_by: str | None
    created_at: datetime


class ProfilePage(BaseModel):
    account_id: str
    profiles: list[ProfileView]
    next_cursor: str | None


class PlanView(BaseModel):
    code: str
    monthly_allowance: int | None
    unlimited: bool


class MismatchView(BaseModel):
    account_id: str
    bucket: str
    balance: int
    ledger: int


class VerifyView(BaseModel):
    ok: bool
    accounts_checked: int
    mismatches: list[MismatchView]
