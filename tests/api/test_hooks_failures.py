"""202 only after the commit: a failing commit or a database that is down never answers 202.

A broker that is down after the commit still answers 202: the event waits in the inbox.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api import inbox
from api.app import create_app
from tests import services
from tests.api.conftest import (
    as_json,
    events,
    lose_commits,
    nothing_stored,
    queued,
    refuse_commits,
    signed,
)
from worker import runtime

LEAD = {"first_name": "Ada", "email": "ada@example.com"}


def test_a_failing_commit_answers_503_not_202(client, factory, funnel, monkeypatch,
                                               service_env, pg_url):
    lose_commits(monkeypatch, service_env["DATABASE_URL"], pg_url)
    body = as_json(LEAD)
    r = client.post(funnel.url, content=body, headers=signed(funnel.secret, body, "msg_1"))
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "unavailable" and r.headers["retry-after"]
    monkeypatch.undo()
    assert nothing_stored(factory)
    assert queued(service_env["REDIS_URL"], service_env["BROKER_NAMESPACE"]) == 0


def test_a_commit_the_database_refuses_answers_5xx(pg_url, service_env, monkeypatch, request):
    """PostgreSQL itself fails the COMMIT (a deferred constraint trigger), not a mock."""
    if service_env["DATABASE_URL"] != pg_url:
        pytest.skip("PostgreSQL only: a deferred trigger fails the commit itself")
    factory = request.getfixturevalue("factory")
    funnel = request.getfixturevalue("funnel")
    refuse_commits(pg_url)
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        body = as_json(LEAD)
        r = client.post(funnel.url, content=body, headers=signed(funnel.secret, body, "m1"))
    assert r.status_code >= 500 and r.status_code != 202
    assert "commit refused" not in r.text
    assert nothing_stored(factory)
    assert queued(service_env["REDIS_URL"], service_env["BROKER_NAMESPACE"]) == 0


def test_a_database_that_is_down_answers_503(factory, funnel, service_env, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", services.pg_url("cc_down").replace(":5432", ":1"))
    runtime.reset()
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        r = client.post(funnel.url, json=LEAD, headers=funnel.bearer())
    assert r.status_code == 503 and r.json()["error"] == "unavailable"
    assert "5432" not in r.text and "postgres" not in r.text


def test_a_broker_that_is_down_after_the_commit_still_answers_202(factory, funnel,
                                                                  service_env, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    runtime.reset()
    with TestClient(create_app()) as client:
        r = client.post(funnel.url, json=LEAD, headers=funnel.bearer())
    assert r.status_code == 202
    [event] = events(factory)
    assert event.status == "received"  # in the inbox, for the sweeper to send again


def test_a_resent_webhook_sends_a_received_event_again(client, factory, funnel, service_env,
                                                       monkeypatch):
    sent: list[str] = []

    def send_ingests(_producer, event_ids):
        sent.extend(event_ids)
        return 0

    monkeypatch.setattr(inbox.Producer, "send_ingests", send_ingests)
    headers = {**funnel.bearer(), "webhook-id": "w-1"}
    first = client.post(funnel.url, json=LEAD, headers=headers)
    again = client.post(funnel.url, json=LEAD, headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert sent == [first.json()["event_id"]] * 2
