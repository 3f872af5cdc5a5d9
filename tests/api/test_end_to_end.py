"""Leads end to end: the Procfile's ``web`` and ``worker`` lines as their own processes,
real HTTP, real Redis, real databases, webhooks sent as a funnel tool and a form send them."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import httpx
import pytest

from db import sources
from db.engine import session_scope
from db.models import Balance, ClientProfile, Event, LedgerEntry
from tests.api.conftest import ACCOUNT, count, signed
from tests.procs import MainApp, running, wait_for

pytestmark = pytest.mark.timeout(240)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_leads_become_free_profiles_through_the_procfile_processes(
        service_env, factory, funnel, website, other_source, redis_url, namespace, tmp_path):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    funnel_body = json.dumps({"contact": {"first_name": "Ada", "last_name": "Lovelace",
                                          "email": "ada@example.com"},
                              "phone": "+1 415 555 2671", "source": "manual"})
    form_body = urlencode({"your-name": "Grace Hopper", "your-email": "grace@example.com",
                           "source": "manual"})
    with running("worker", service_env, tmp_path / "worker.log",
                 {"WORKER_PROCESSES": "1", "WORKER_THREADS": "2"}), \
            running("web", service_env, tmp_path / "web.log", {"PORT": str(port)}):
        wait_for(lambda: _up(base), timeout=60, what="the web process")
        post = httpx.Client(base_url=base, timeout=10).post
        first = post(funnel.url, content=funnel_body,
                     headers=signed(funnel.secret, funnel_body, "ghl-1"))
        resent = post(funnel.url, content=funnel_body,
                      headers=signed(funnel.secret, funnel_body, "ghl-1"))
        form = post(website.url, content=form_body, headers={
            **website.bearer(), "content-type": "application/x-www-form-urlencoded"})
        assert (first.status_code, resent.status_code, form.status_code) == (202, 200, 202)
        assert resent.json()["event_id"] == first.json()["event_id"]
        wait_for(lambda: count(factory, ClientProfile) == 2, what="two profiles")

        old = datetime.now(UTC) - timedelta(minutes=10)
        with session_scope(factory) as s:
            sources.disable(s, website.id)
        refusals = {
            "wrong signature": post(funnel.url, content=funnel_body, headers=signed(
                sources.new_secret(), funnel_body, "x1")),
            "another source's signature": post(funnel.url, content=funnel_body, headers=signed(
                other_source.secret, funnel_body, "x2")),
            "10 minutes old": post(funnel.url, content=funnel_body, headers=signed(
                funnel.secret, funnel_body, "x3", at=old)),
            "disabled": post(website.url, content=form_body, headers={
                **website.bearer(), "content-type": "application/x-www-form-urlencoded"}),
            "65 KiB": post(funnel.url, content=(b"x" * 1024 for _ in range(65)),
                           headers={**funnel.bearer(), "content-type": "application/json"}),
            "text/plain": post(funnel.url, content="Ada Lovelace", headers={
                **funnel.bearer(), "content-type": "text/plain"}),
        }
        assert {k: r.status_code for k, r in refusals.items()} == {
            "wrong signature": 401, "another source's signature": 401, "10 minutes old": 401,
            "disabled": 410, "65 KiB": 413, "text/plain": 415}
        assert all(r.json()["message"] for r in refusals.values())
        metrics = httpx.get(f"{base}/metrics").text
    assert count(factory, Event) == 2 and count(factory, ClientProfile) == 2
    with session_scope(factory) as s:
        by_source = {p.source: p for p in s.query(ClientProfile)}
        assert set(by_source) == {"funnel", "website"}
        assert by_source["funnel"].email == "ada@example.com"
        assert by_source["funnel"].phone == "+14155552671"
        assert (by_source["website"].first_name, by_source["website"].last_name) == (
            "Grace", "Hopper")
        assert by_source["website"].extra == {"source": "manual"}
        balance = s.get(Balance, ACCOUNT)
        assert balance is not None
        assert (balance.monthly_remaining, balance.extra_remaining) == (3, 0)
        assert {e.status for e in s.query(Event)} == {"created"}
    assert count(factory, LedgerEntry, LedgerEntry.kind == "charge") == 0
    outcomes = MainApp(redis_url, namespace).outcomes()
    assert sorted(o["source"] for o in outcomes) == ["funnel", "website"]
    assert all(o["request_id"] == o["event_id"] and o["profile"] for o in outcomes)
    assert 'status="401"' in metrics and 'status="413"' in metrics
    logs = (tmp_path / "web.log").read_text() + (tmp_path / "worker.log").read_text()
    for personal in ("Ada", "Lovelace", "ada@example.com", "Grace", "+14155552671"):
        assert personal not in logs
