"""Monthly renewal (R3), set-based, for one account or a hundred thousand.

:func:`renew_locked` is the one definition of a renewal. The lazy path
(``ledger.lock_balance``) calls it with the single account it holds; the
scheduled path (:func:`renew_due`) calls it with a chunk of due accounts, each
chunk its own transaction. Either way an account due at ``now`` gets, for the
period of ``now`` in its own zone:

* its pending downgrade applied (R7);
* an ``expiry`` entry of what is left of its monthly credits, when anything is,
  keyed ``expire:{account}:{period}``;
* a ``grant`` entry of its plan's allowance (bucket ``unlimited``, amount 0, for
  unlimited plans), keyed ``grant:{account}:{period}``;
* its balance moved to the new period, with the same figures the entries show.

An account missed for several months is renewed once, for the month of ``now``.
The grant key is unique, so an account is never renewed twice for a period.
Period bounds are computed in Python once per time zone; the rest is a handful
of ``INSERT ... SELECT`` and ``UPDATE ... FROM`` statements per zone, the same
on PostgreSQL and on SQLite (3.35 or newer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    String,
    Table,
    any_,
    bindparam,
    case,
    exists,
    func,
    literal,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Subquery

from db.engine import session_scope
from db.models import Account, Balance, LedgerEntry, Plan, UTCDateTime
from db.periods import period_bounds, period_of
from schemas.common import Bucket

#: accounts per transaction of the scheduled renewal
CHUNK = 2000

_balances = cast(Table, Balance.__table__)
_accounts = cast(Table, Account.__table__)
_plans = cast(Table, Plan.__table__)
_entries = cast(Table, LedgerEntry.__table__)

#: the columns a renewal writes in ``ledger_entries``, in the order of the SELECTs below
_ENTRY_COLUMNS = ("account_id", "kind", "bucket", "amount", "period", "idempotency_key",
                  "reason", "monthly_after", "extra_after", "created_at")


def renew_locked(session: Session, due: Iterable[tuple[str, str]], *, now: datetime) -> int:
    """Renew the accounts of ``due``, pairs of (account id, IANA zone), at ``now``.

    The caller holds the balance rows locked (``FOR UPDATE`` on PostgreSQL, the
    write lock on SQLite). An account that is not due at ``now``, whose zone is
    no longer the one given, or that already has its grant for the period, is
    left as it is.

    :returns: how many accounts were renewed.
    """
    due = list(due)
    if not due:
        return 0
    session.flush()
    b, a, p = _balances.c, _accounts.c, _plans.c
    at = literal(now, UTCDateTime())
    periods = _periods({tz for _, tz in due}, now)
    z = periods.c
    grant_key = literal("grant:") + b.account_id + literal(":") + z.period
    granted = exists().where(_entries.c.idempotency_key == grant_key)
    claimed = list(session.execute(
        select(b.account_id).join(_accounts, a.id == b.account_id)
        .join(periods, z.tz == a.timezone)
        .where(*_among(session, [account_id for account_id, _ in due]),
               b.period_end <= at, ~granted)
        .order_by(b.account_id)
    ).scalars())
    if not claimed:
        return 0
    session.execute(
        update(_accounts)
        .where(_among(session, claimed)[1], a.pending_plan_code.is_not(None))
        .values(plan_code=a.pending_plan_code, pending_plan_code=None, updated_at=now)
    )
    allowance = func.coalesce(p.monthly_allowance, 0)
    expiries = (
        select(b.account_id, literal(1).label("n"), literal("expiry"),
               literal(Bucket.monthly.value), -b.monthly_remaining, z.period,
               literal("expire:") + b.account_id + literal(":") + z.period,
               literal("unused monthly credits of ") + b.period, literal(0),
               b.extra_remaining, at)
        .join(_accounts, a.id == b.account_id).join(periods, z.tz == a.timezone)
        .where(*_among(session, claimed), b.monthly_remaining != 0)
    )
    grants = (
        select(b.account_id, literal(2).label("n"), literal("grant"),
               case((p.unlimited, literal(Bucket.unlimited.value)),
                    else_=literal(Bucket.monthly.value)),
               allowance, z.period, grant_key, literal("plan ") + p.code, allowance,
               b.extra_remaining, at)
        .join(_accounts, a.id == b.account_id).join(periods, z.tz == a.timezone)
        .join(_plans, p.code == a.plan_code)
        .where(*_among(session, claimed))
    )
    both = union_all(expiries, grants).subquery()
    rows = select(*[c for c in both.c if c.name != "n"]).order_by(*both.c[:2])
    session.execute(_insert_entries(session, rows))
    session.execute(
        update(_balances)
        .where(*_among(session, claimed), a.id == b.account_id,
               p.code == a.plan_code, z.tz == a.timezone)
        .values(period=z.period, period_start=z.period_start, period_end=z.period_end,
                monthly_used=0, unlimited_used=0, unlimited=p.unlimited,
                monthly_allowance=p.monthly_allowance, monthly_remaining=allowance,
                updated_at=now)
    )
    return len(claimed)


def _periods(zones: Iterable[str], now: datetime) -> Subquery:
    """A small table of (tz, period, period_start, period_end) at ``now``, one row a zone.

    Period math needs the IANA rules, so it is done here, once per zone.
    """
    rows = []
    for tz in sorted(zones):
        period = period_of(now, tz)
        start, end = period_bounds(period, tz)
        rows.append(select(literal(tz).label("tz"), literal(period).label("period"),
                           literal(start, UTCDateTime()).label("period_start"),
                           literal(end, UTCDateTime()).label("period_end")))
    return (union_all(*rows) if len(rows) > 1 else rows[0]).subquery("periods")


def _insert_entries(session: Session, rows: Any) -> Any:
    """``INSERT INTO ledger_entries ... SELECT rows ON CONFLICT DO NOTHING``."""
    dialect = postgresql if _dialect(session) == "postgresql" else sqlite
    return (dialect.insert(_entries).from_select(_ENTRY_COLUMNS, rows)
            .on_conflict_do_nothing(index_elements=["idempotency_key"]))


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _among(session: Session, ids: Sequence[str]) -> tuple[ColumnElement[bool], ...]:
    """The balance and the account are among ``ids``.

    One array parameter on PostgreSQL, a list on SQLite. The filter is given on
    both tables so that PostgreSQL reads each by its primary key rather than
    scanning ``accounts`` for the join.
    """
    if _dialect(session) == "postgresql":
        values = postgresql.ARRAY(String())
        return tuple(cast(ColumnElement[bool], column == any_(
            bindparam(None, list(ids), type_=values, unique=True)))
            for column in (_balances.c.account_id, _accounts.c.id))
    return (_balances.c.account_id.in_(list(ids)), _accounts.c.id.in_(list(ids)))


def count_due(session: Session, *, now: datetime) -> int:
    """How many accounts are due for renewal at ``now``."""
    return int(session.execute(
        select(func.count()).select_from(_balances).where(_balances.c.period_end <= now)
    ).scalar_one())


def renew_due(factory: sessionmaker[Session], *, now: datetime, chunk: int = CHUNK,
              on_chunk: Callable[[int], None] | None = None) -> int:
    """Renew every account due at ``now``, ``chunk`` accounts per transaction.

    Rows another transaction holds are skipped (on PostgreSQL, ``SKIP LOCKED``):
    that transaction is renewing them, or will find them renewed. Accounts are
    walked in id order, so every run ends.

    :param on_chunk: called after each committed chunk with the accounts it renewed.
    :returns: how many accounts this call renewed.
    """
    total = 0
    after: str | None = None
    b = _balances.c
    while True:
        with session_scope(factory) as session:
            query = (select(b.account_id, _accounts.c.timezone)
                     .join(_accounts, _accounts.c.id == b.account_id)
                     .where(b.period_end <= now).order_by(b.account_id).limit(chunk)
                     .with_for_update(of=_balances, skip_locked=True))
            if after is not None:
                query = query.where(b.account_id > after)
            rows = [(str(r[0]), str(r[1])) for r in session.execute(query)]
            renewed = renew_locked(session, rows, now=now) if rows else 0
        total += renewed
        if on_chunk is not None and rows:
            on_chunk(renewed)
        if len(rows) < chunk:
            return total
        after = rows[-1][0]
