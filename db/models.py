"""SQLAlchemy models.

Credits are integers. ``ledger_entries`` is append-only; ``balances`` holds one
row per account that only the transaction writing its entries changes, so that
a balance reads in constant time and ``ledger verify`` can recompute it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """An aware datetime stored in UTC; SQLite gets it back aware too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where an aware one is required")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Plan(Base):
    __tablename__ = "plans"

    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: credits per month; NULL when unlimited
    monthly_allowance: Mapped[int | None] = mapped_column(Integer)
    unlimited: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint(
            "(unlimited AND monthly_allowance IS NULL) OR "
            "(NOT unlimited AND monthly_allowance >= 0)",
            name="allowance",
        ),
    )


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    plan_code: Mapped[str] = mapped_column(ForeignKey("plans.code"))
    #: a downgrade waiting for the next renewal (R7)
    pending_plan_code: Mapped[str | None] = mapped_column(ForeignKey("plans.code"))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    #: occurred_at of the last applied upsert; older messages are ignored
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Balance(Base):
    """The current balance of one account, for the period it was last renewed to."""

    __tablename__ = "balances"

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    #: "YYYY-MM" in the account's zone
    period: Mapped[str] = mapped_column(String(7))
    period_start: Mapped[datetime] = mapped_column(UTCDateTime())
    #: the next renewal instant (midnight of the next 1st in the account's zone)
    period_end: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    #: the allowance granted for this period; NULL when unlimited
    monthly_allowance: Mapped[int | None] = mapped_column(Integer)
    unlimited: Mapped[bool] = mapped_column(Boolean, default=False)
    #: monthly credits charged this period (for R7 upgrades)
    monthly_used: Mapped[int] = mapped_column(Integer, default=0)
    monthly_remaining: Mapped[int] = mapped_column(Integer, default=0)
    extra_remaining: Mapped[int] = mapped_column(Integer, default=0)
    #: profiles charged to the unlimited bucket this period (R5)
    unlimited_used: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint("monthly_remaining >= 0", name="monthly_nonneg"),
        CheckConstraint("extra_remaining >= 0", name="extra_nonneg"),
    )


class LedgerEntry(Base):
    """One change of a balance. Never updated, never deleted (R8)."""

    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    #: grant | expiry | purchase | charge | unlimited_usage | adjustment
    kind: Mapped[str] = mapped_column(String(32))
    #: monthly | extra | unlimited
    bucket: Mapped[str] = mapped_column(String(16))
    #: credits, signed; zero for unlimited usage and unlimited renewals
    amount: Mapped[int] = mapped_column(Integer)
    period: Mapped[str] = mapped_column(String(7))
    idempotency_key: Mapped[str] = mapped_column(String(300), unique=True)
    event_id: Mapped[str | None] = mapped_column(String(64))
    reference: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str | None] = mapped_column(String(128))
    monthly_after: Mapped[int] = mapped_column(Integer)
    extra_after: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_ledger_account_id_id", "account_id", "id"),)


class Source(Base):
    """A registered lead source of one account (website form or funnel tool)."""

    __tablename__ = "sources"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    #: the Standard Webhooks secret; HMAC needs it in clear to verify
    secret: Mapped[str] = mapped_column(String(200))
    previous_secret: Mapped[str | None] = mapped_column(String(200))
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: sha256 hex of the bearer token; the token itself is never stored
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Event(Base):
    """Every event received on any channel: the inbox, and the record of its outcome."""

    __tablename__ = "events"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(128))
    channel: Mapped[str] = mapped_column(String(16))
    source_id: Mapped[str | None] = mapped_column(String(64))
    #: "manual:<account>:<request_id>" or "hook:<source>:<webhook-id>"; NULL for a
    #: message too broken to name its own identity
    dedupe_key: Mapped[str | None] = mapped_column(String(400), unique=True)
    #: the request id the sender gave (manual) or the webhook id (leads)
    external_id: Mapped[str | None] = mapped_column(String(200))
    #: the broker message that carried it (manual channel): a redelivery of that
    #: message finds this row and gets its outcome again; unique, NULL for leads
    message_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    #: the validated payload, or for leads and invalid messages the raw body
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    raw_body: Mapped[str | None] = mapped_column(Text)
    content_type: Mapped[str | None] = mapped_column(String(200))
    errors: Mapped[list[Any] | None] = mapped_column(JSON)
    profile_id: Mapped[str | None] = mapped_column(String(64))
    charged_bucket: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(200))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_events_status_received_at", "status", "received_at"),
        Index("ix_events_account_id_id", "account_id", "id"),
    )


class ClientProfile(Base):
    __tablename__ = "client_profiles"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    #: manual | website | funnel, from the channel only (R1)
    source: Mapped[str] = mapped_column(String(16))
    source_id: Mapped[str | None] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(ForeignKey("events.id"))
    first_name: Mapped[str | None] = mapped_column(String(100))
    last_name: Mapped[str | None] = mapped_column(String(100))
    email: Mapped[str | None] = mapped_column(String(254))
    phone: Mapped[str | None] = mapped_column(String(40))
    date_of_birth: Mapped[date | None] = mapped_column(Date)
    state: Mapped[str | None] = mapped_column(String(200))
    extra: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    created_by: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        UniqueConstraint("event_id"),
        Index("ix_client_profiles_account_id_created_at", "account_id", "created_at"),
    )
