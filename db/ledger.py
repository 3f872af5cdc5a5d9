"""The credit rules R3 to R8, in one place.

Every function takes an open session, locks the balance row it changes, writes
its ledger entries and the balance in that same transaction, and flushes; the
caller's ``session_scope`` commits. Each write carries a unique idempotency key
so that running it twice changes nothing more.

Any operation on a balance first renews it when its period has ended, so the
rules hold whether or not the scheduled renewal has run (R3).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from db import renewal
from db.errors import Conflict, NotFound, Rejected
from db.models import Account, Balance, LedgerEntry, Plan
from db.periods import period_bounds, period_of
from schemas.common import CREDIT_PRICE_CENTS, Bucket


@dataclass(frozen=True, slots=True)
class Charge:
    """What a manual creation cost: a bucket, or a refusal (R6), and what is left."""

    bucket: Bucket | None
    monthly_remaining: int
    extra_remaining: int
    #: the end of the balance's period: its next renewal
    renews_at: datetime

    @property
    def refused(self) -> bool:
        return self.bucket is None


# -- plans ----------------------------------------------------------------------------

def add_plan(session: Session, code: str, *, monthly: int | None, unlimited: bool,
             now: datetime) -> Plan:
    """Create a plan, or return it when an identical one exists.

    :raises Conflict: when a plan with this code exists with other terms.
    :raises Rejected: when the terms are contradictory.
    """
    if unlimited == (monthly is not None):
        raise Rejected("a plan is either --unlimited or has a --monthly allowance")
    if monthly is not None and monthly < 0:
        raise Rejected("a monthly allowance cannot be negative")
    plan = session.get(Plan, code)
    if plan is not None:
        if plan.unlimited != unlimited or plan.monthly_allowance != monthly:
            raise Conflict(f"plan {code!r} exists with other terms")
        return plan
    plan = Plan(code=code, monthly_allowance=monthly, unlimited=unlimited, created_at=now)
    session.add(plan)
    session.flush()
    return plan


def get_plan(session: Session, code: str) -> Plan:
    plan = session.get(Plan, code)
    if plan is None:
        raise NotFound(f"no plan {code!r}; see `casecredits plan list`")
    return plan


# -- accounts and plan changes (R7) -------------------------------------------------------

def get_account(session: Session, account_id: str) -> Account:
    account = session.get(Account, account_id)
    if account is None:
        raise NotFound(f"no account {account_id!r}")
    return account


def upsert_account(session: Session, account_id: str, *, plan_code: str,
                   timezone: str | None, occurred_at: datetime, now: datetime) -> Account:
    """Create an account with this month's allowance, or change its plan and zone.

    An upgrade is immediate: the month's remaining monthly credits become the
    new allowance minus what was used this month, never below zero. A downgrade
    waits for the next renewal. Moving to an unlimited plan is immediate.
    A message older than the last one applied changes nothing.

    :raises NotFound: when the plan does not exist.
    """
    plan = get_plan(session, plan_code)
    account = session.get(Account, account_id)
    if account is None:
        return _create_account(session, account_id, plan, timezone or "UTC", occurred_at, now)

    balance = lock_balance(session, account_id, now)
    if occurred_at < account.changed_at:
        return account
    account.changed_at = occurred_at
    account.updated_at = now
    if timezone and timezone != account.timezone:
        account.timezone = timezone
        balance.period_start, balance.period_end = period_bounds(balance.period, timezone)
    if plan.code == account.plan_code:
        account.pending_plan_code = None
        return account
    current = get_plan(session, account.plan_code)
    if _is_downgrade(current, plan):
        account.pending_plan_code = plan.code
        return account
    account.plan_code = plan.code
    account.pending_plan_code = None
    if plan.unlimited:
        balance.unlimited = True
        balance.monthly_allowance = None
    else:
        assert plan.monthly_allowance is not None
        target = max(0, plan.monthly_allowance - balance.monthly_used)
        balance.unlimited = False
        balance.monthly_allowance = plan.monthly_allowance
        _write(session, balance, kind="plan_change", bucket=Bucket.monthly,
               amount=target - balance.monthly_remaining,
               key=f"plan:{account_id}:{occurred_at.isoformat()}:{plan.code}",
               reason=f"upgrade {current.code} -> {plan.code}", now=now)
    balance.updated_at = now
    session.flush()
    return account


def _is_downgrade(current: Plan, new: Plan) -> bool:
    if new.unlimited:
        return False
    if current.unlimited:
        return True
    assert current.monthly_allowance is not None and new.monthly_allowance is not None
    return new.monthly_allowance < current.monthly_allowance


def _create_account(session: Session, account_id: str, plan: Plan, timezone: str,
                    occurred_at: datetime, now: datetime) -> Account:
    account = Account(id=account_id, plan_code=plan.code, timezone=timezone,
                      changed_at=occurred_at, created_at=now, updated_at=now)
    session.add(account)
    period = period_of(now, timezone)
    start, end = period_bounds(period, timezone)
    balance = Balance(account_id=account_id, period=period, period_start=start, period_end=end,
                      monthly_allowance=plan.monthly_allowance, unlimited=plan.unlimited,
                      monthly_used=0, monthly_remaining=0, extra_remaining=0, unlimited_used=0,
                      updated_at=now)
    session.add(balance)
    session.flush()
    _write(session, balance, kind="grant",
           bucket=Bucket.unlimited if plan.unlimited else Bucket.monthly,
           amount=plan.monthly_allowance or 0, key=f"grant:{account_id}:{period}",
           reason=f"plan {plan.code}", now=now)
    return account


# -- balances -------------------------------------------------------------------------

def lock_balance(session: Session, account_id: str, now: datetime) -> Balance:
    """Lock the account's balance row for this transaction, renewing it if due.

    PostgreSQL takes a row lock (``FOR UPDATE``); SQLite already holds the
    database's write lock from ``BEGIN IMMEDIATE``.

    :raises NotFound: when the account does not exist.
    """
    balance = session.execute(
        select(Balance).where(Balance.account_id == account_id).with_for_update()
    ).scalar_one_or_none()
    if balance is None:
        raise NotFound(f"no account {account_id!r}")
    if now >= balance.period_end:
        _renew_locked(session, balance, now)
    return balance


def renew_account(session: Session, account_id: str, now: datetime) -> bool:
    """Renew one account if its period has ended; True when it did."""
    balance = session.execute(
        select(Balance).where(Balance.account_id == account_id).with_for_update()
    ).scalar_one_or_none()
    if balance is None:
        raise NotFound(f"no account {account_id!r}")
    if now < balance.period_end:
        return False
    _renew_locked(session, balance, now)
    return True


def _renew_locked(session: Session, balance: Balance, now: datetime) -> None:
    """Renew one locked, due balance (R3): ``renewal.renew_locked`` for one account.

    The scheduled renewal runs the same statements over chunks of accounts, so
    both paths write the same ledger: the expiry of what is left of the monthly
    credits, the new month's grant, and a pending downgrade applied (R7). An
    account missed for several months is renewed once, for the month of ``now``.

    :raises Conflict: when the grant for this period exists while the balance
        still shows an earlier one (the ledger and the balance disagree).
    """
    session.flush()
    # the zone as it is now that the balance is locked (a zone changes only under that lock)
    timezone = session.execute(
        select(Account.timezone).where(Account.id == balance.account_id)).scalar_one()
    if not renewal.renew_locked(session, [(balance.account_id, timezone)], now=now):
        raise Conflict(f"account {balance.account_id!r} is due but already renewed for "
                       f"{period_of(now, timezone)}; run `ledger verify`")
    session.refresh(balance)
    loaded = session.identity_map.get(session.identity_key(Account, balance.account_id))
    if loaded is not None:  # a downgrade may have changed it
        session.refresh(loaded)


def charge(session: Session, account_id: str, *, event_id: str, now: datetime) -> Charge:
    """Charge one credit for a new manual profile, or refuse (R4, R5, R6).

    Monthly credits go first, then extra ones; unlimited plans record usage
    and are never refused. A refusal writes nothing (the balance row stays
    locked until the transaction ends).

    On PostgreSQL, when no renewal is due, one statement locks, decides,
    charges and appends the entry (:data:`_CHARGE_ONE`); otherwise the balance
    is locked (and renewed) first and the rules below apply, the same rules.

    :raises NotFound: when the account does not exist.
    """
    if session.get_bind().dialect.name == "postgresql":
        done = _charge_in_one_statement(session, account_id, event_id=event_id, now=now)
        if done is not None:
            return done
    balance = lock_balance(session, account_id, now)
    key = f"charge:{event_id}"
    bucket: Bucket | None = None
    if balance.unlimited:
        balance.unlimited_used += 1
        _write(session, balance, kind="unlimited_usage", bucket=Bucket.unlimited, amount=0,
               key=key, event_id=event_id, now=now)
        bucket = Bucket.unlimited
    elif balance.monthly_remaining > 0:
        balance.monthly_used += 1
        _write(session, balance, kind="charge", bucket=Bucket.monthly, amount=-1, key=key,
               event_id=event_id, now=now)
        bucket = Bucket.monthly
    elif balance.extra_remaining > 0:
        _write(session, balance, kind="charge", bucket=Bucket.extra, amount=-1, key=key,
               event_id=event_id, now=now)
        bucket = Bucket.extra
    return Charge(bucket, balance.monthly_remaining, balance.extra_remaining,
                  balance.period_end)


def charge_ctes() -> str:
    """:func:`charge` as SQL common table expressions, for PostgreSQL.

    So that one statement, one round trip, can lock, decide, charge and record.
    In order:

    * ``locked``: the balance row, locked ``FOR UPDATE``, with the ``bucket`` the
      rules pick (unlimited, else monthly, else extra; NULL is a refusal). Empty
      when the account does not exist or its period has ended: a renewal is due,
      and :func:`charge`'s general path must run instead;
    * ``charged``: the balance after the credit is taken, where there is a bucket;
    * ``entry``: its ledger entry, as :func:`_write` writes it.

    Parameters: ``:account_id``, ``:event_id``, ``:now``.
    """
    return """
locked AS (
    SELECT account_id, period_end, monthly_remaining, extra_remaining,
           CASE WHEN unlimited THEN 'unlimited' WHEN monthly_remaining > 0 THEN 'monthly'
                WHEN extra_remaining > 0 THEN 'extra' END AS bucket
    FROM balances WHERE account_id = :account_id AND period_end > :now
    FOR UPDATE
), charged AS (
    UPDATE balances AS b SET
        monthly_remaining = b.monthly_remaining - (locked.bucket = 'monthly')::int,
        monthly_used = b.monthly_used + (locked.bucket = 'monthly')::int,
        extra_remaining = b.extra_remaining - (locked.bucket = 'extra')::int,
        unlimited_used = b.unlimited_used + (locked.bucket = 'unlimited')::int,
        updated_at = :now
    FROM locked
    WHERE b.account_id = locked.account_id AND locked.bucket IS NOT NULL
    RETURNING b.account_id, b.period, b.monthly_remaining, b.extra_remaining,
              b.monthly_used, b.unlimited_used, locked.bucket
), entry AS (
    INSERT INTO ledger_entries (account_id, kind, bucket, amount, period, idempotency_key,
                                event_id, monthly_after, extra_after, created_at)
    SELECT account_id, CASE bucket WHEN 'unlimited' THEN 'unlimited_usage' ELSE 'charge' END,
           bucket, CASE bucket WHEN 'unlimited' THEN 0 ELSE -1 END, period,
           'charge:' || :event_id, :event_id, monthly_remaining, extra_remaining, :now
    FROM charged
)"""  # noqa: S608 (only code's own fragments go in)


def charge_batch_ctes(*, after_decide: str, gate: str) -> str:
    """:func:`charge` for several events at once, as SQL common table expressions.

    For PostgreSQL, after the caller's first CTE ``input``: one row per event,
    with ``n`` (its place in the batch), ``account_id``, ``event_id`` and any
    columns of the caller's. In order:

    * ``locked``: the balance rows of the batch's accounts, locked ``FOR UPDATE``
      in account order, without those whose period has ended (their events
      must take :func:`charge`'s general path, which renews first);
    * ``decided``: each event of a locked account (the input's columns and the
      balance's), with ``k``, its rank among its account's events, and the
      ``bucket`` the rules pick for it as if the first ``k - 1`` were charged
      one by one: unlimited, else monthly while ``k`` is within the monthly
      credits, else extra while within both, else NULL (a refusal); and
      ``monthly_after`` and ``extra_after``, what the balance holds after it;
    * ``after_decide``: the caller's own CTEs, each ending in a comma;
    * ``charged``: every balance less its events' credits, where ``gate`` (a SQL
      condition) holds;
    * ``entry``: a ledger entry per charged event, in order, as :func:`_write`
      writes it.

    Parameters: ``:now``, and ``:accounts``, the input's account ids as an array:
    the balances are found by their key with it (a join on ``input``, whose size
    the planner cannot know, scanned the whole table twice a batch: with 20,000
    accounts ``python -m bench.group_commit --accounts 20000`` ran two to three times
    slower).
    """
    return f"""
locked AS MATERIALIZED (
    SELECT account_id, period, period_end, unlimited, monthly_remaining, extra_remaining
    FROM balances
    WHERE account_id = ANY(CAST(:accounts AS text[])) AND period_end > :now
    ORDER BY account_id
    FOR UPDATE
), decided AS MATERIALIZED (
    SELECT r.*,
           CASE WHEN r.unlimited THEN 'unlimited' WHEN r.k <= r.monthly_remaining THEN 'monthly'
                WHEN r.k <= r.monthly_remaining + r.extra_remaining THEN 'extra' END AS bucket,
           CASE WHEN r.unlimited THEN r.monthly_remaining
                ELSE greatest(r.monthly_remaining - r.k, 0) END AS monthly_after,
           CASE WHEN r.unlimited THEN r.extra_remaining
                ELSE greatest(r.extra_remaining - greatest(r.k - r.monthly_remaining, 0), 0)
           END AS extra_after
    FROM (SELECT i.*, l.period, l.period_end, l.unlimited, l.monthly_remaining,
                 l.extra_remaining,
                 row_number() OVER (PARTITION BY i.account_id ORDER BY i.n) AS k
          FROM input AS i JOIN locked AS l ON l.account_id = i.account_id) AS r
), {after_decide}
charged AS (
    UPDATE balances AS b SET
        monthly_remaining = b.monthly_remaining - c.monthly,
        monthly_used = b.monthly_used + c.monthly,
        extra_remaining = b.extra_remaining - c.extra,
        unlimited_used = b.unlimited_used + c.unlimited,
        updated_at = :now
    FROM (SELECT account_id, count(*) FILTER (WHERE bucket = 'monthly') AS monthly,
                 count(*) FILTER (WHERE bucket = 'extra') AS extra,
                 count(*) FILTER (WHERE bucket = 'unlimited') AS unlimited
          FROM decided WHERE bucket IS NOT NULL GROUP BY account_id) AS c
    WHERE b.account_id = ANY(CAST(:accounts AS text[])) AND b.account_id = c.account_id
          AND ({gate})
    RETURNING b.account_id
), entry AS (
    INSERT INTO ledger_entries (account_id, kind, bucket, amount, period, idempotency_key,
                                event_id, monthly_after, extra_after, created_at)
    SELECT account_id, CASE bucket WHEN 'unlimited' THEN 'unlimited_usage' ELSE 'charge' END,
           bucket, CASE bucket WHEN 'unlimited' THEN 0 ELSE -1 END, period,
           'charge:' || event_id, event_id, monthly_after, extra_after, :now
    FROM decided WHERE bucket IS NOT NULL AND ({gate})
    ORDER BY account_id, k
)"""  # noqa: S608 (only code's own fragments go in)


#: :func:`charge` in one round trip; no row when the general path must run
_CHARGE_ONE = text("WITH " + charge_ctes() + """
SELECT locked.bucket, locked.period_end,
       coalesce(charged.monthly_remaining, locked.monthly_remaining) AS monthly_remaining,
       coalesce(charged.extra_remaining, locked.extra_remaining) AS extra_remaining,
       charged.monthly_used, charged.unlimited_used
FROM locked LEFT JOIN charged ON true
""")


def _charge_in_one_statement(session: Session, account_id: str, *, event_id: str,
                             now: datetime) -> Charge | None:
    """:data:`_CHARGE_ONE`; None when the general path must run (no account, renewal due)."""
    session.flush()
    row = session.connection().execute(_CHARGE_ONE, {
        "account_id": account_id, "now": now, "event_id": event_id}).one_or_none()
    if row is None:
        return None
    bucket = Bucket(row.bucket) if row.bucket is not None else None
    loaded = session.identity_map.get(session.identity_key(Balance, account_id))
    if loaded is not None and bucket is not None:  # keep an object the session holds true
        for name in ("monthly_remaining", "extra_remaining", "monthly_used", "unlimited_used"):
            set_committed_value(loaded, name, getattr(row, name))
        set_committed_value(loaded, "updated_at", now)
    return Charge(bucket, row.monthly_remaining, row.extra_remaining, row.period_end)


def purchase(session: Session, *, purchase_id: str, account_id: str, quantity: int,
             amount_cents: int, now: datetime) -> tuple[LedgerEntry, bool]:
    """Add bought extra credits, once per ``purchase_id`` (R4).

    :returns: the ledger entry and whether it was written now (False: a repeat).
    :raises Conflict: when ``purchase_id`` was used for another account or quantity.
    :raises Rejected: when the amount is not quantity x 900 cents.
    """
    if not 1 <= quantity <= 10_000:
        raise Rejected("quantity must be between 1 and 10000")
    if amount_cents != quantity * CREDIT_PRICE_CENTS:
        raise Rejected(f"amount_cents must be {quantity * CREDIT_PRICE_CENTS} for {quantity}")
    key = f"purchase:{purchase_id}"
    balance = lock_balance(session, account_id, now)
    existing = session.execute(
        select(LedgerEntry).where(LedgerEntry.idempotency_key == key)
    ).scalar_one_or_none()
    if existing is not None:
        if existing.account_id != account_id or existing.amount != quantity:
            raise Conflict(f"purchase {purchase_id!r} was recorded with other terms")
        return existing, False
    entry = _write(session, balance, kind="purchase", bucket=Bucket.extra, amount=quantity,
                   key=key, reference=purchase_id, reason=f"{amount_cents} cents", now=now)
    return entry, True


def adjust(session: Session, account_id: str, *, amount: int, bucket: Bucket, reason: str,
           actor: str, now: datetime, key: str) -> LedgerEntry:
    """An operator's correction of one bucket, recorded with who and why.

    :raises Rejected: for a zero amount, an empty reason, the unlimited bucket,
        or a correction that would take the bucket below zero.
    """
    if amount == 0:
        raise Rejected("an adjustment of zero changes nothing")
    if not reason.strip():
        raise Rejected("an adjustment needs a --reason")
    if bucket not in (Bucket.monthly, Bucket.extra):
        raise Rejected("adjust the monthly or the extra bucket")
    balance = lock_balance(session, account_id, now)
    current = balance.monthly_remaining if bucket is Bucket.monthly else balance.extra_remaining
    if current + amount < 0:
        raise Rejected(f"the {bucket} bucket holds {current}; {amount} would take it below zero")
    return _write(session, balance, kind="adjustment", bucket=bucket, amount=amount, key=key,
                  reason=reason, actor=actor, now=now)


def _write(session: Session, balance: Balance, *, kind: str, bucket: Bucket, amount: int,
           key: str, now: datetime, event_id: str | None = None, reference: str | None = None,
           reason: str | None = None, actor: str | None = None,
           period: str | None = None) -> LedgerEntry:
    """Apply ``amount`` to the balance and append its ledger entry (R8)."""
    if bucket is Bucket.monthly:
        balance.monthly_remaining += amount
    elif bucket is Bucket.extra:
        balance.extra_remaining += amount
    balance.updated_at = now
    entry = LedgerEntry(account_id=balance.account_id, kind=kind, bucket=bucket.value,
                        amount=amount, period=period or balance.period, idempotency_key=key,
                        event_id=event_id, reference=reference, reason=reason, actor=actor,
                        monthly_after=balance.monthly_remaining,
                        extra_after=balance.extra_remaining, created_at=now)
    session.add(entry)
    session.flush()
    return entry


# -- verification ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Mismatch:
    account_id: str
    bucket: str
    balance: int
    ledger: int


def verify(session: Session) -> list[Mismatch]:
    """Every account whose balance differs from the sum of its ledger (R8)."""
    sums: dict[tuple[str, str], int] = {
        (account_id, bucket): int(total)
        for account_id, bucket, total in session.execute(
            select(LedgerEntry.account_id, LedgerEntry.bucket, func.sum(LedgerEntry.amount))
            .where(LedgerEntry.bucket.in_([Bucket.monthly.value, Bucket.extra.value]))
            .group_by(LedgerEntry.account_id, LedgerEntry.bucket)
        )
    }
    out: list[Mismatch] = []
    for balance in session.execute(select(Balance)).scalars():
        for bucket, held in ((Bucket.monthly, balance.monthly_remaining),
                             (Bucket.extra, balance.extra_remaining)):
            summed = sums.get((balance.account_id, bucket.value), 0)
            if summed != held or held < 0:
                out.append(Mismatch(balance.account_id, bucket.value, held, summed))
    return out
