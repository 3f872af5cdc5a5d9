"""Scheduled renewal of every account whose period has ended (R3).

Accounts are taken in chunks, each chunk its own transaction; a row another
renewal holds is skipped (it is being renewed). The work per account is
``ledger.renew_account``, the same function the lazy path uses.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db import ledger
from db.engine import session_scope
from db.models import Balance

#: accounts per transaction
CHUNK = 1000


def renew_due(factory: sessionmaker[Session], *, now: datetime, chunk: int = CHUNK) -> int:
    """Renew every account due at ``now``; return how many were renewed."""
    total = 0
    while True:
        with session_scope(factory) as session:
            ids = session.execute(
                select(Balance.account_id).where(Balance.period_end <= now)
                .order_by(Balance.account_id).limit(chunk)
                .with_for_update(skip_locked=True)
            ).scalars().all()
            for account_id in ids:
                total += ledger.renew_account(session, account_id, now)
        if len(ids) < chunk:
            return total
