"""Monthly renewal (R3), set-based, for one account or a hundred thousand.

:func:`renew_locked` is the one definition of a renewal. The lazy path
(``ledger.lock_balance``) calls it with the single account whose balance it
holds; the scheduled path (:func:`renew_due`) calls it with chunks of due
accounts, each chunk its own transaction. Either way an account due at ``now``
gets, for the period of ``now`` in its own zone:

* its pending downgrade applied (R7);
* an ``expiry`` entry of what is left of its monthly credits, when anything is,
  keyed ``expire:{account}:{period}``;
* a ``grant`` entry of its plan's allowance (bucket ``unlimited``, amount 0, for
  unlimited plans), keyed ``grant:{account}:{period}``;
* its balance moved to the new period, with the figures the entries show.

An account missed for several months is renewed once, for the month of ``now``.
The grant key is unique, so an account is never renewed twice for a period.

Period bounds need the IANA rules, so they are computed in Python, once per
zone, into a small ``periods`` table; the rest is five statements per chunk
(``SELECT``, ``UPDATE`` for downgrades, two ``INSERT ... SELECT ... ON CONFLICT DO
NOTHING``, ``UPDATE ... FROM``), the same on PostgreSQL and on SQLite (3.35 or
newer, with its JSON functions).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    ColumnElement,
    Table,
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
from sqlalchemy.sql import Select, Subquery, TableValuedAlias

from db.engine import session_scope
from db.models import Account, Balance, LedgerEntry, Plan, UTCDateTime
from db.periods import period_bounds, period_of
from schemas.common import Bucket

#: accounts per transaction of the scheduled renewal
CHUNK = 2000
#: connections renewing side by side on PostgreSQL (one per core of a small machine)
WORKERS = 2

_balances = cast(Table, Balance.__table__)
_accounts = cast(Table, Account.__table__)
_plans = cast(Table, Plan.__table__)
_entries = cast(Table, LedgerEntry.__table__)
#: the columns of balances, accounts and plans, named as SQL aliases would be
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
    z = periods.c
    listed = _listed(session, [account_id for account_id, _ in due])
    granted = exists().where(_entries.c.idempotency_key == _grant_key(periods))
    claimed = session.execute(
        select(b.account_id, a.pending_plan_code.is_not(None))
        .select_from(listed.join(_balances, b.account_id == listed.c.value)
                     .join(_accounts, a.id == b.account_id).join(periods, z.tz == a.timezone))
        .where(b.period_end <= literal(now, UTCDateTime()), ~granted)
        .order_by(b.account_id)).all()
    return _renew(session, [str(row[0]) for row in claimed],
                  downgrades=[str(row[0]) for row in claimed if row[1]], periods=periods,
                  now=now)


def renew_due(factory: sessionmaker[Session], *, now: datetime, chunk: int = CHUNK,
              workers: int = WORKERS, on_chunk: Callable[[int], None] | None = None) -> int:
    """Renew every account due at ``now``, ``chunk`` accounts per transaction.

    Each chunk takes the next due accounts in id order and locks their balance
    rows, skipping rows another transaction holds (``SKIP LOCKED`` on
    PostgreSQL): that transaction is renewing them, or will find them renewed.
    Walking in id order, every run ends. On PostgreSQL the due accounts are
    split into ``workers`` ranges of ids renewed side by side, each on its own
    connection; SQLite has a single writer and renews them in one walk.

    :param on_chunk: called after each committed chunk with the accounts it
        renewed (from the worker threads, when there are several).
    :returns: how many accounts this call renewed.
    """
    ranges = _split(factory, now=now, workers=workers, chunk=chunk)
    if len(ranges) == 1:
        return _renew_range(factory, ranges[0], now=now, chunk=chunk, on_chunk=on_chunk)
    with ThreadPoolExecutor(max_workers=len(ranges), thread_name_prefix="renewal") as pool:
        done = [pool.submit(_renew_range, factory, bounds, now=now, chunk=chunk,
                            on_chunk=on_chunk) for bounds in ranges]
        return sum(future.result() for future in done)


def _split(factory: sessionmaker[Session], *, now: datetime, workers: int,
           chunk: int) -> list[tuple[str | None, str | None]]:
    """Ranges of account ids ``(after, up_to]`` holding about as many due accounts each."""
    with session_scope(factory) as session:
        if _dialect(session) != "postgresql" or workers < 2:
            return [(None, None)]
        due = count_due(session, now=now)
        workers = min(workers, due // chunk)
        if workers < 2:
            return [(None, None)]
        # in the database's order of ids; None when another run renewed them meanwhile
        cuts = [session.execute(
            select(b.account_id).where(b.period_end <= now).order_by(b.account_id)
            .offset(due * i // workers).limit(1)).scalar_one_or_none()
            for i in range(1, workers)]
    bounds: list[str | None] = [None, *dict.fromkeys(c for c in cuts if c is not None), None]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _renew_range(factory: sessionmaker[Session], bounds: tuple[str | None, str | None], *,
                 now: datetime, chunk: int, on_chunk: Callable[[int], None] | None) -> int:
    """Renew the due accounts with ids in ``(after, up_to]``, a chunk per transaction."""
    after, up_to = bounds
    total = 0
    while True:
        with session_scope(factory) as session:
            query = (select(b.account_id, a.timezone).join(_accounts, a.id == b.account_id)
                     .where(b.period_end <= now).order_by(b.account_id).limit(chunk)
                     .with_for_update(of=_balances, skip_locked=True))
            if after is not None:
                query = query.where(b.account_id > after)
            if up_to is not None:
                query = query.where(b.account_id <= up_to)
            due = [(str(account_id), str(tz)) for account_id, tz in session.execute(query)]
            renewed = renew_locked(session, due, now=now)
        total += renewed
        if on_chunk is not None and due:
            on_chunk(renewed)
        if len(due) < chunk:
            return total
        after = due[-1][0]


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


def _renew(session: Session, ids: Sequence[str], *, downgrades: Sequence[str],
           periods: Subquery, now: datetime) -> int:
    """Write the renewal of the claimed accounts ``ids``: the pending downgrades of
    ``downgrades`` (some of ``ids``), then expiry, grant and balance.

    Every statement is driven by the list of ids and reads the tables by primary
    key, which stays a good plan with or without table statistics.
    """
    if not ids:
        return 0
    z = periods.c
    if downgrades:
        downgrading = _listed(session, downgrades)
        session.execute(
            update(_accounts).where(a.id == downgrading.c.value)
            .values(plan_code=a.pending_plan_code, pending_plan_code=None, updated_at=now))
    listed = _listed(session, ids)
    at = literal(now, UTCDateTime())
    accounts = (listed.join(_balances, b.account_id == listed.c.value)
                .join(_accounts, a.id == listed.c.value).join(periods, z.tz == a.timezone))
    expiries = (
        select(b.account_id, literal("expiry"), literal(Bucket.monthly.value),
               -b.monthly_remaining, z.period,
               literal("expire:") + b.account_id + literal(":") + z.period,
               literal("unused monthly credits of ") + b.period, literal(0),
               b.extra_remaining, at)
        .select_from(accounts).where(b.monthly_remaining != 0).order_by(b.account_id))
    allowance = func.coalesce(p.monthly_allowance, 0)
    grants = (
        select(b.account_id, literal("grant"),
               case((p.unlimited, literal(Bucket.unlimited.value)),
                    else_=literal(Bucket.monthly.value)),
               allowance, z.period, _grant_key(periods), literal("plan ") + p.code, allowance,
               b.extra_remaining, at)
        .select_from(accounts.join(_plans, p.code == a.plan_code)).order_by(b.account_id))
    for rows in (expiries, grants):
        session.execute(_insert_entries(session, rows))
    session.execute(
        update(_balances)
        .where(b.account_id == listed.c.value, a.id == listed.c.value, p.code == a.plan_code,
               z.tz == a.timezone)
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


def _listed(session: Session, ids: Sequence[str]) -> TableValuedAlias:
    """``ids`` as a one-column table (``value``), sent as one JSON text.

    One parameter, however many ids: ``json_array_elements_text`` on PostgreSQL,
    ``json_each`` on SQLite.
    """
    values = literal(list(ids), JSON())
    if _dialect(session) == "postgresql":
        return func.json_array_elements_text(values).table_valued("value")
    return func.json_each(values).table_valued("value")
