"""Test data: plans, accounts and messages with sensible defaults."""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db import intake, ledger
from db.engine import session_scope
from db.intake import Outcome
from schemas.messages import CreateManualProfile

_seq = itertools.count(1)


def manual_payload(account_id: str, request_id: str | None = None, *,
                   occurred_at: str = "2026-11-10T12:00:00+00:00", **client: Any
                   ) -> dict[str, Any]:
    """A ``create_manual_profile`` message as the main application sends it."""
    body = {"first_name": "Ada", "last_name": "Lovelace", **client}
    return {"request_id": request_id or f"req-{next(_seq)}", "account_id": account_id,
            "created_by": "agent-7", "occurred_at": occurred_at, "client": body}


def setup_account(factory: sessionmaker[Session], account_id: str, *, plan: str = "pro",
                  monthly: int | None = 3, unlimited: bool = False, extra: int = 0,
                  timezone: str | None = None, now: datetime) -> None:
    with session_scope(factory) as s:
        ledger.add_plan(s, plan, monthly=None if unlimited else monthly, unlimited=unlimited,
                        now=now)
        ledger.upsert_account(s, account_id, plan_code=plan, timezone=timezone,
                              occurred_at=now, now=now)
        if extra:
            ledger.purchase(s, purchase_id=f"seed-{account_id}", account_id=account_id,
                            quantity=extra, amount_cents=extra * 900, now=now)


def create(factory: sessionmaker[Session], payload: dict[str, Any], *, now: datetime,
           message_id: str | None = None) -> Outcome:
    msg = CreateManualProfile.model_validate(payload)
    with session_scope(factory) as s:
        return intake.create_manual_profile(s, msg, message_id=message_id or f"m-{next(_seq)}",
                                            now=now)


def balance_of(factory: sessionmaker[Session], account_id: str) -> tuple[int, int]:
    from db.models import Balance

    with session_scope(factory) as s:
        b = s.get(Balance, account_id)
        assert b is not None
        return b.monthly_remaining, b.extra_remaining
