"""Concurrent renewals grant once: two scheduled runs and the lazy path at the same time."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db import ledger, renewal
from db.engine import make_engine, make_session_factory, session_scope
from db.models import Account, Balance, LedgerEntry
from tests.conftest import at

NOV = at("2025-11-10T12:00:00")
DEC = at("2025-12-01T00:00:00")
#: zones whose December has begun at ``DEC``
ZONES = ("UTC", "Asia/Kolkata", "Pacific/Kiritimati", "Europe/Berlin")


def seed(factory: sessionmaker[Session], n: int) -> list[str]:
    ids = [f"acct-{i:04d}" for i in range(n)]
    with session_scope(factory) as s:
        ledger.add_plan(s, "pro", monthly=10, unlimited=False, now=NOV)
        for i, account_id in enumerate(ids):
            ledger.upsert_account(s, account_id, plan_code="pro", timezone=ZONES[i % 4],
                                  occurred_at=NOV, now=NOV)
    return ids


def run_together(jobs: dict[str, Callable[[], int]]) -> dict[str, int]:
    """Start every job at the same moment; their results, or the first error raised."""
    barrier = threading.Barrier(len(jobs))
    results: dict[str, int] = {}
    errors: list[BaseException] = []

    def run(name: str, job: Callable[[], int]) -> None:
        barrier.wait()
        try:
            results[name] = job()
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=item) for item in jobs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    if errors:
        raise errors[0]
    return results


def grants_per_account(factory: sessionmaker[Session]) -> dict[str, int]:
    with session_scope(factory) as s:
        return {account_id: int(n) for account_id, n in s.execute(
            select(LedgerEntry.account_id, func.count()).where(
                LedgerEntry.kind == "grant", LedgerEntry.period == "2025-12")
            .group_by(LedgerEntry.account_id))}


def test_two_concurrent_runs_grant_once(factory):
    ids = seed(factory, 120)
    results = run_together({
        "one": lambda: renewal.renew_due(factory, now=DEC, chunk=7),
        "two": lambda: renewal.renew_due(factory, now=DEC, chunk=7),
    })
    assert results["one"] + results["two"] == len(ids)
    assert grants_per_account(factory) == dict.fromkeys(ids, 1)
    with session_scope(factory) as s:
        assert ledger.verify(s) == []


@pytest.mark.postgres
def test_scheduled_runs_and_the_lazy_path_together_grant_once_on_postgres(pg_url):
    engine = make_engine(pg_url, pool_size=5)
    factory = make_session_factory(engine)
    try:
        ids = seed(factory, 400)

        def lazily() -> int:
            renewed = 0
            for account_id in reversed(ids):
                with session_scope(factory) as s:
                    renewed += ledger.renew_account(s, account_id, DEC)
            return renewed

        results = run_together({
            "one": lambda: renewal.renew_due(factory, now=DEC, chunk=25),
            "two": lambda: renewal.renew_due(factory, now=DEC, chunk=25),
            "lazy": lazily,
        })
        assert sum(results.values()) == len(ids)
        assert grants_per_account(factory) == dict.fromkeys(ids, 1)
        with session_scope(factory) as s:
            assert ledger.verify(s) == []
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_the_lazy_path_renews_in_the_zone_the_account_has_once_locked(pg_url):
    """A zone changed by another transaction after this one read the account still counts."""
    engine = make_engine(pg_url, pool_size=2)
    factory = make_session_factory(engine)
    try:
        with session_scope(factory) as s:
            ledger.add_plan(s, "pro", monthly=10, unlimited=False, now=NOV)
            ledger.upsert_account(s, "a", plan_code="pro", timezone="UTC", occurred_at=NOV,
                                  now=NOV)
        with session_scope(factory) as s:
            assert s.get(Account, "a").timezone == "UTC"  # type: ignore[union-attr]
            moved = at("2025-11-30T11:00:00")  # already December in Kiritimati
            with session_scope(factory) as other:
                ledger.upsert_account(other, "a", plan_code="pro", timezone="Pacific/Kiritimati",
                                      occurred_at=moved, now=moved)
            assert ledger.renew_account(s, "a", at("2025-11-30T12:00:00")) is True
            renewed = s.get(Balance, "a")
            assert renewed is not None and renewed.period == "2025-12"
            assert renewed.period_end == at("2025-12-31T10:00:00")
    finally:
        engine.dispose()
