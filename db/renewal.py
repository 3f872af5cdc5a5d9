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

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    ColumnElement,
    String,
    Table,
    case,
    exists,
    func,
    literal,
    select,
    union_all,
    update,
)
from sqlalchemy import (
    cast as sql_cast,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Select, Subquery

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
b, a, p = _balances.c, _accounts.c, _plans.c

#: the columns a renewal writes in ``ledger_entries``, in the order of the SELECTs below
_ENTRY_COLUMNS = ("account_id", "kind", "bucket", "amount", "period", "idempotency_key",
                  "reason", "monthly_after", "extra_after", "created_at")


def renew_locked(session: Session, due: Iterable[tuple[str, str]], *, now: datetime) -> int:
    """Renew the accounts of ``due``, pairs of (account id, IANA zone), at ``now``.

    The caller holds their balance rows locked (``FOR UPDATE`` on PostgreSQL,
    the write lock on SQLite). An account that is not due at ``now``, whose zone
    is no longer the one given, or that has its grant for the period already, is
    left as it is.

    :returns: how many accounts were renewed.
    """
    due = list(due)
    if not due:
        return 0
    session.flush()
    periods = _periods({tz for _, tz in due}, now)
    claimable = _claimable(periods, now).where(*_among(session, [i for i, _ in due]))
    return _renew(session, list(session.execute(claimable).scalars()), periods, now=now)


def renew_due(factory: sessionmaker[Session], *, now: datetime, chunk: int = CHUNK,
              on_chunk: Callable[[int], None] | None = None) -> int:
    """Renew every account due at ``now``, ``chunk`` accounts per transaction.

    Each chunk takes the next due accounts in id order and locks their balance
    rows, skipping rows another transaction holds (``SKIP LOCKED`` on
    PostgreSQL): that transaction is renewing them, or will find them renewed.
    Walking in id order, every run ends.

    :param on_chunk: called after each committed chunk with the accounts it renewed.
    :returns: how many accounts this call renewed.
    """
    with session_scope(factory) as session:
        zones = list(session.execute(
            select(a.timezone).distinct().join(_balances, b.account_id == a.id)
            .where(b.period_end <= now)).scalars())
    if not zones:
        return 0
    periods = _periods(zones, now)
    total = 0
    after: str | None = None
    while True:
        with session_scope(factory) as session:
            query = (_claimable(periods, now).limit(chunk)
                     .with_for_update(of=_balances, skip_locked=True))
            if after is not None:
                query = query.where(b.account_id > after)
            claimed = list(session.execute(query).scalars())
            renewed = _renew(session, claimed, periods, now=now)
        total += renewed
        if on_chunk is not None and claimed:
            on_chunk(renewed)
        if len(claimed) < chunk:
            return total
        after = claimed[-1]


def count_due(session: Session, *, now: datetime) -> int:
    """How many accounts are due for renewal at ``now``."""
    return int(session.execute(
        select(func.count()).select_from(_balances).where(b.period_end <= now)
    ).scalar_one())


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


def _grant_key(periods: Subquery) -> ColumnElement[str]:
    return literal("grant:") + b.account_id + literal(":") + periods.c.period


def _claimable(periods: Subquery, now: datetime) -> Select[str]:
    """Ids of the accounts due at ``now`` in one of ``periods``' zones and not yet
    granted for that zone's period, in id order."""
    granted = exists().where(_entries.c.idempotency_key == _grant_key(periods))
    return (select(b.account_id).join(_accounts, a.id == b.account_id)
            .join(periods, periods.c.tz == a.timezone)
            .where(b.period_end <= literal(now, UTCDateTime()), ~granted)
            .order_by(b.account_id))


def _renew(session: Session, ids: Sequence[str], periods: Subquery, *, now: datetime) -> int:
    """Write the renewal of the claimed accounts ``ids``: downgrade, expiry, grant, balance."""
    if not ids:
        return 0
    z = periods.c
    among = _among(session, ids)
    at = literal(now, UTCDateTime())
    session.execute(
        update(_accounts).where(among[1], a.pending_plan_code.is_not(None))
        .values(plan_code=a.pending_plan_code, pending_plan_code=None, updated_at=now))
    accounts = _balances.join(_accounts, a.id == b.account_id).join(periods, z.tz == a.timezone)
    expiries = (
        select(b.account_id, literal("expiry"), literal(Bucket.monthly.value),
               -b.monthly_remaining, z.period,
               literal("expire:") + b.account_id + literal(":") + z.period,
               literal("unused monthly credits of ") + b.period, literal(0),
               b.extra_remaining, at)
        .select_from(accounts).where(*among, b.monthly_remaining != 0).order_by(b.account_id))
    allowance = func.coalesce(p.monthly_allowance, 0)
    grants = (
        select(b.account_id, literal("grant"),
               case((p.unlimited, literal(Bucket.unlimited.value)),
                    else_=literal(Bucket.monthly.value)),
               allowance, z.period, _grant_key(periods), literal("plan ") + p.code, allowance,
               b.extra_remaining, at)
        .select_from(accounts.join(_plans, p.code == a.plan_code)).where(*among)
        .order_by(b.account_id))
    for rows in (expiries, grants):
        session.execute(_insert_entries(session, rows))
    session.execute(
        update(_balances)
        .where(*among, a.id == b.account_id, p.code == a.plan_code, z.tz == a.timezone)
        .values(period=z.period, period_start=z.period_start, period_end=z.period_end,
                monthly_used=0, unlimited_used=0, unlimited=p.unlimited,
                monthly_allowance=p.monthly_allowance, monthly_remaining=allowance,
                updated_at=now))
    return len(ids)


def _insert_entries(session: Session, rows: Select[Any]) -> Any:
    """``INSERT INTO ledger_entries ... SELECT rows ON CONFLICT DO NOTHING``."""
    dialect = postgresql if _dialect(session) == "postgresql" else sqlite
    return (dialect.insert(_entries).from_select(_ENTRY_COLUMNS, rows)
            .on_conflict_do_nothing(index_elements=["idempotency_key"]))


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _among(session: Session, ids: Sequence[str]) -> tuple[ColumnElement[bool], ...]:
    """The balance, and the account, are among ``ids``.

    The ids travel as one JSON text, read by ``json_array_elements_text`` on
    PostgreSQL and ``json_each`` on SQLite: far cheaper to send than an array or
    thousands of parameters. Their least and greatest, taken in the database's
    own collation, bound an index range, so that a chunk is read as a range of
    both primary keys rather than key by key.
    """
    text = literal(json.dumps(list(ids)), String())
    if _dialect(session) == "postgresql":
        values = func.json_array_elements_text(sql_cast(text, JSON)).table_valued("value")
    else:
        values = func.json_each(text).table_valued("value")
    low = select(func.min(values.c.value)).scalar_subquery()
    high = select(func.max(values.c.value)).scalar_subquery()
    listed = select(values.c.value)
    return (b.account_id.in_(listed) & b.account_id.between(low, high),
            a.id.in_(listed) & a.id.between(low, high))
