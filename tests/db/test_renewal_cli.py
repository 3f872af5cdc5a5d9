"""``casecredits renew`` as a real process, with ``DATABASE_URL`` set."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from db import ledger
from db.engine import make_engine, make_session_factory, session_scope
from tests.conftest import at

NOV = at("2025-11-10T12:00:00")
CASECREDITS = shutil.which("casecredits") or str(Path(sys.executable).with_name("casecredits"))


def seed(url: str, n: int) -> None:
    engine = make_engine(url)
    try:
        with session_scope(make_session_factory(engine)) as s:
            ledger.add_plan(s, "pro", monthly=10, unlimited=False, now=NOV)
            for i in range(n):
                ledger.upsert_account(s, f"acct-{i:04d}", plan_code="pro",
                                      timezone=("UTC", "Pacific/Kiritimati")[i % 2],
                                      occurred_at=NOV, now=NOV)
    finally:
        engine.dispose()


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": db_url, "VAR_DIR": str(tmp_path / "var"),
            "LOG_FORMAT": "json"}


def renew(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CASECREDITS, "renew", *args], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_renew_at_an_instant_prints_how_many_it_renewed(db_url, env):
    seed(db_url, 4)
    early = renew(env, "--at", "2025-11-30T09:59:59Z", "--json")
    assert early.returncode == 0, early.stderr
    assert json.loads(early.stdout) == {"renewed": 0}
    kiritimati = renew(env, "--at", "2025-11-30T10:00:00Z", "--json")
    assert json.loads(kiritimati.stdout) == {"renewed": 2}
    utc = renew(env, "--at", "2025-12-01T00:00:00", "--json")  # no offset: UTC
    assert json.loads(utc.stdout) == {"renewed": 2}
    again = renew(env, "--at", "2025-12-01T00:00:00+00:00")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("renewed 0 accounts as of 2025-12-01T00:00:00+00:00")


def test_a_bad_instant_is_one_line_and_no_traceback(db_url, env):
    run = renew(env, "--at", "the first", "--json")
    assert run.returncode == 2
    assert "not an ISO 8601 instant: 'the first'" in run.stderr
    assert "Traceback" not in run.stderr


#: UTC accounts on plan pro, renewed for November, written in bulk
BULK = [
    "INSERT INTO plans (code, monthly_allowance, unlimited, created_at) "
    "VALUES ('pro', 10, false, :t)",
    "INSERT INTO accounts (id, plan_code, timezone, changed_at, created_at, updated_at) "
    "SELECT 'acct-' || lpad(i::text, 5, '0'), 'pro', 'UTC', :t, :t, :t "
    "FROM generate_series(1, :n) AS i",
    "INSERT INTO balances (account_id, period, period_start, period_end, monthly_allowance, "
    "unlimited, monthly_used, monthly_remaining, extra_remaining, unlimited_used, updated_at) "
    "SELECT id, '2025-11', :start, :end, 10, false, 0, 10, 0, 0, :t "
    "FROM accounts",
    "INSERT INTO ledger_entries (account_id, kind, bucket, amount, period, idempotency_key, "
    "reason, monthly_after, extra_after, created_at) SELECT id, 'grant', 'monthly', 10, "
    "'2025-11', 'grant:' || id || :suffix, 'plan pro', 10, 0, :t FROM accounts",
]


@pytest.mark.postgres
def test_two_renew_processes_at_once_grant_once(pg_url, tmp_path):
    """More accounts than one chunk holds, so the second process skips the first's rows."""
    engine = make_engine(pg_url)
    try:
        with engine.begin() as conn:
            for statement in BULK:
                conn.execute(text(statement), {
                    "t": NOV, "n": 4500, "start": at("2025-11-01T00:00"),
                    "end": at("2025-12-01T00:00"), "suffix": ":2025-11"})
    finally:
        engine.dispose()
    env = {**os.environ, "DATABASE_URL": pg_url, "VAR_DIR": str(tmp_path / "var"),
           "LOG_FORMAT": "json"}
    procs = [subprocess.Popen([CASECREDITS, "renew", "--at", "2025-12-01T00:00:00Z", "--json"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err for _, err in outputs]
    assert sum(json.loads(out)["renewed"] for out, _ in outputs) == 4500
    assert renew(env, "--at", "2025-12-01T00:00:00Z", "--json").stdout.strip() == (
        '{\n  "renewed": 0\n}')
