"""The manual channel end to end: the Procfile's ``worker`` line as its own
processes, real Redis, real databases, messages sent as the main app sends them."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from db.engine import make_engine, make_session_factory, session_scope
from db.models import Balance, ClientProfile, Event, LedgerEntry
from tests.factories import manual_payload
from tests.procs import MainApp, cli, running, wait_for

pytestmark = pytest.mark.timeout(240)


def _now() -> str:
    return datetime.now(UTC).isoformat()


@pytest.fixture
def main_app(redis_url, namespace):
    app = MainApp(redis_url, namespace)
    yield app
    app.close()


@pytest.fixture
def sessions(db_url):
    engine = make_engine(db_url)
    yield make_session_factory(engine)
    engine.dispose()


def _count(sessions, model, *where) -> int:
    with session_scope(sessions) as s:
        return s.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def _outcomes_for(main_app, account_id):
    return [o for o in main_app.outcomes() if o["account_id"] == account_id]


def test_credits_flow_through_a_real_worker(service_env, main_app, sessions, tmp_path):
    env = service_env
    assert cli("db", "upgrade", env=env).returncode == 0
    assert cli("plan", "add", "pro", "--monthly", "3", env=env).returncode == 0
    assert cli("plan", "add", "enterprise", "--unlimited", env=env).returncode == 0
    with running("worker", env, tmp_path / "worker.log",
                 {"WORKER_PROCESSES": "2", "WORKER_THREADS": "4"}):
        for account, plan in (("acme", "pro"), ("dupes", "pro"), ("big", "enterprise")):
            main_app.send("accounts", "upsert_account",
                          {"account_id": account, "plan": plan, "occurred_at": _now()})
        wait_for(lambda: _count(sessions, Balance) == 3, what="accounts")
        main_app.send("accounts", "purchase_credits",
                      {"purchase_id": "pay-1", "account_id": "acme", "quantity": 2,
                       "amount_cents": 1800, "occurred_at": _now()})
        wait_for(lambda: _count(sessions, LedgerEntry, LedgerEntry.kind == "purchase") == 1,
                 what="purchase")

        for i in range(7):
            main_app.send("profiles", "create_manual_profile", manual_payload("acme", f"a-{i}"))
        for _ in range(3):
            main_app.send("profiles", "create_manual_profile", manual_payload("dupes", "same"))
        for i in range(50):
            main_app.send("profiles", "create_manual_profile", manual_payload("big", f"b-{i}"))
        wait_for(lambda: len(main_app.outcomes()) == 60, timeout=90, what="60 outcomes")

    acme = _outcomes_for(main_app, "acme")
    assert Counter((o["status"], o["charged_bucket"]) for o in acme) == {
        ("created", "monthly"): 3, ("created", "extra"): 2, ("refused", None): 2}
    refusals = [o for o in acme if o["status"] == "refused"]
    assert {o["reason"] for o in refusals} == {"insufficient_credits"}
    assert all(o["profile_id"] is None and o["remaining"]["extra_credit_price_cents"] == 900
               for o in refusals)
    assert _count(sessions, ClientProfile, ClientProfile.account_id == "acme") == 5

    dupes = _outcomes_for(main_app, "dupes")
    assert Counter(o["status"] for o in dupes) == {"created": 1, "duplicate": 2}
    assert len({o["profile_id"] for o in dupes}) == 1
    assert _count(sessions, LedgerEntry, LedgerEntry.account_id == "dupes",
                  LedgerEntry.kind == "charge") == 1

    big = _outcomes_for(main_app, "big")
    assert Counter((o["status"], o["charged_bucket"]) for o in big) == {
        ("created", "unlimited"): 50}
    assert _count(sessions, LedgerEntry, LedgerEntry.account_id == "big",
                  LedgerEntry.kind == "unlimited_usage") == 50

    shown = json.loads(cli("credits", "show", "acme", "--json", env=env).stdout)
    assert (shown["monthly_remaining"], shown["extra_remaining"], shown["total_available"]) == (
        0, 0, 0)
    event_id = acme[0]["event_id"]
    event = json.loads(cli("event", "show", "acme", event_id, "--json", env=env).stdout)
    assert event["status"] == acme[0]["status"] and event["source"] == "manual"
    verify = cli("ledger", "verify", env=env)
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.parametrize("processes,threads", [(2, 8)])
def test_concurrent_creations_never_overspend(service_env, main_app, sessions, tmp_path,
                                              processes, threads):
    """200 creations on one account with 50 credits: exactly 50 profiles, balance zero."""
    env = service_env
    assert cli("db", "upgrade", env=env).returncode == 0
    assert cli("plan", "add", "small", "--monthly", "20", env=env).returncode == 0
    assert cli("account", "add", "hot", "--plan", "small", env=env).returncode == 0
    assert cli("credits", "buy", "hot", "30", "--ref", "pay-hot", env=env).returncode == 0
    for i in range(200):
        main_app.send("profiles", "create_manual_profile", manual_payload("hot", f"h-{i}"))
    with running("worker", env, tmp_path / "worker.log",
                 {"WORKER_PROCESSES": str(processes), "WORKER_THREADS": str(threads)}):
        wait_for(lambda: len(main_app.outcomes()) == 200, timeout=120, what="200 outcomes")
    statuses = Counter(o["status"] for o in main_app.outcomes())
    assert statuses == {"created": 50, "refused": 150}
    assert _count(sessions, ClientProfile) == 50
    assert _count(sessions, LedgerEntry, LedgerEntry.kind == "charge") == 50
    with session_scope(sessions) as s:
        balance = s.get(Balance, "hot")
        assert balance is not None
        assert (balance.monthly_remaining, balance.extra_remaining) == (0, 0)
    assert cli("ledger", "verify", env=env).returncode == 0


def test_an_invalid_message_is_recorded_and_dead_lettered_without_retry(
        service_env, main_app, sessions, tmp_path):
    env = service_env
    assert cli("db", "upgrade", env=env).returncode == 0
    bad = manual_payload("acme", "bad-1")
    bad["client"]["last_name"] = ""
    bad["client"]["email"] = "ada.secret@example.com"
    main_app.send("profiles", "create_manual_profile", bad)
    main_app.send("accounts", "purchase_credits",
                  {"purchase_id": "x", "account_id": "acme", "quantity": 2,
                   "amount_cents": 1, "occurred_at": _now()})
    log = tmp_path / "worker.log"
    with running("worker", env, log, {"WORKER_PROCESSES": "1", "WORKER_THREADS": "2"}):
        wait_for(lambda: len(main_app.dead_letters("profiles")) == 1
                 and len(main_app.dead_letters("accounts")) == 1, what="dead letters")
    with session_scope(sessions) as s:
        event = s.execute(select(Event)).scalar_one()
        assert (event.status, event.external_id) == ("invalid", "bad-1")
        assert any(e["loc"] == ["client", "last_name"] for e in event.errors or [])
    [outcome] = main_app.outcomes()
    assert (outcome["status"], outcome["request_id"]) == ("invalid", "bad-1")
    [dead] = main_app.dead_letters("profiles")
    assert dead["options"].get("retries", 0) == 0
    text = log.read_text()
    assert "message.dead_lettered" in text and "amount_cents must be" in text
    assert "ada.secret@example.com" not in text and "Lovelace" not in text
