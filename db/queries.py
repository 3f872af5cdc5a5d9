"""The read side: views of balances, ledgers, events and profiles. Writes nothing."""

from __future__ import annotations

import base64
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.errors import NotFound, Rejected
from db.ledger import get_account, get_plan
from db.models import Balance, ClientProfile, Event, LedgerEntry, Plan
from db.periods import period_bounds, period_of, zone
from schemas.views import (
    CreditsView,
    EventView,
    LedgerEntryView,
    LedgerPage,
    PlanView,
    ProfilePage,
    ProfileView,
)

#: most rows a page may hold
MAX_PAGE = 500


def credits(session: Session, account_id: str, *, now: datetime) -> CreditsView:
    """The account's credits at ``now``.

    When the period has ended and nobody has renewed it yet, this shows the
    balance as the renewal will make it, so a read is fresh on the 1st.
    """
    account = get_account(session, account_id)
    balance = session.get(Balance, account_id)
    if balance is None:
        raise NotFound(f"no account {account_id!r}")
    period, end = balance.period, balance.period_end
    unlimited, allowance = balance.unlimited, balance.monthly_allowance
    monthly, extra = balance.monthly_remaining, balance.extra_remaining
    plan_code, pending = account.plan_code, account.pending_plan_code
    if now >= balance.period_end:
        plan = get_plan(session, pending or plan_code)
        plan_code, pending = plan.code, None
        period = period_of(now, account.timezone)
        end = period_bounds(period, account.timezone)[1]
        unlimited, allowance = plan.unlimited, plan.monthly_allowance
        monthly = plan.monthly_allowance or 0
    return CreditsView(
        account_id=account_id, plan=plan_code, pending_plan=pending, unlimited=unlimited,
        period=period, timezone=account.timezone,
        monthly_allowance=None if unlimited else allowance,
        monthly_remaining=None if unlimited else monthly, extra_remaining=extra,
        total_available=None if unlimited else monthly + extra,
        renews_at=end, renews_at_local=end.astimezone(zone(account.timezone)),
    )


def _encode(value: int | str) -> str:
    return base64.urlsafe_b64encode(str(value).encode()).decode().rstrip("=")


def _decode(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise Rejected("bad cursor") from exc


def ledger_page(session: Session, account_id: str, *, limit: int = 50,
                cursor: str | None = None) -> LedgerPage:
    """Ledger entries, newest first, ``limit`` at a time."""
    get_account(session, account_id)
    limit = max(1, min(limit, MAX_PAGE))
    query = select(LedgerEntry).where(LedgerEntry.account_id == account_id)
    if cursor:
        try:
            before = int(_decode(cursor))
        except ValueError as exc:
            raise Rejected("bad cursor") from exc
        query = query.where(LedgerEntry.id < before)
    rows = session.execute(query.order_by(LedgerEntry.id.desc()).limit(limit + 1)).scalars().all()
    more = len(rows) > limit
    rows = rows[:limit]
    return LedgerPage(
        account_id=account_id,
        entries=[LedgerEntryView.model_validate(r, from_attributes=True) for r in rows],
        next_cursor=_encode(rows[-1].id) if more and rows else None,
    )


def event_view(session: Session, account_id: str, event_id: str) -> EventView:
    event = session.get(Event, event_id)
    if event is None or event.account_id != account_id:
        raise NotFound(f"no event {event_id!r} for account {account_id!r}")
    return EventView(event_id=event.id, account_id=event.account_id, status=event.status,
                     source=event.channel, profile_id=event.profile_id,
                     charged_bucket=event.charged_bucket, reason=event.reason,
                     errors=event.errors, received_at=event.received_at,
                     processed_at=event.processed_at)


def profile_view(profile: ClientProfile) -> ProfileView:
    return ProfileView(
        profile_id=profile.id, account_id=profile.account_id, source=profile.source,
        source_id=profile.source_id, event_id=profile.event_id,
        first_name=profile.first_name, last_name=profile.last_name, email=profile.email,
        phone=profile.phone, date_of_birth=profile.date_of_birth, state=profile.state,
        extra=profile.extra or {}, created_by=profile.created_by,
        created_at=profile.created_at)


def get_profile(session: Session, account_id: str, profile_id: str) -> ProfileView:
    profile = session.get(ClientProfile, profile_id)
    if profile is None or profile.account_id != account_id:
        raise NotFound(f"no profile {profile_id!r} for account {account_id!r}")
    return profile_view(profile)


def profiles_page(session: Session, account_id: str, *, source: str | None = None,
                  limit: int = 50, cursor: str | None = None) -> ProfilePage:
    """Profiles, newest first; the cursor is the (created_at, id) of the last one shown."""
    get_account(session, account_id)
    limit = max(1, min(limit, MAX_PAGE))
    query = select(ClientProfile).where(ClientProfile.account_id == account_id)
    if source:
        query = query.where(ClientProfile.source == source)
    if cursor:
        stamp, _, last_id = _decode(cursor).partition("|")
        try:
            at = datetime.fromisoformat(stamp)
        except ValueError as exc:
            raise Rejected("bad cursor") from exc
        query = query.where(
            (ClientProfile.created_at < at)
            | ((ClientProfile.created_at == at) & (ClientProfile.id < last_id)))
    rows = session.execute(
        query.order_by(ClientProfile.created_at.desc(), ClientProfile.id.desc())
        .limit(limit + 1)).scalars().all()
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = (_encode(f"{rows[-1].created_at.isoformat()}|{rows[-1].id}")
                   if more and rows else None)
    return ProfilePage(account_id=account_id, profiles=[profile_view(r) for r in rows],
                       next_cursor=next_cursor)


def plans(session: Session) -> list[PlanView]:
    return [PlanView(code=p.code, monthly_allowance=p.monthly_allowance, unlimited=p.unlimited)
            for p in session.execute(select(Plan).order_by(Plan.code)).scalars()]


def count_accounts(session: Session) -> int:
    return int(session.execute(select(func.count()).select_from(Balance)).scalar_one())
