"""202 only after the commit: a failing commit or a database that is down never answers 202.

A broker that is down after the commit still answers 202: the event waits in the inbox.
"""

from __future__ import annotations

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from api import inbox
from api.app import create_app
from db import intake
from tests import services
from tests.api.conftest import as_json, events, nothing_stored, queued, signed
from worker import runtime

LEAD = {"first_name": "Ada", "email": "ada@example.com"}


def test_a_failing_commit_answers_503_not_202(client, factory, funnel, monkeypatch,
                                               service_env):
    real_record, real_commit = intake.record_lead, Session.commit

    def record(session, *args, **kwargs):
        session.info["wrote_event"] = True
        return real_record(session, *args, **kwargs)

    def commit(session):
        if session.info.pop("wrote_event", False):
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"))
        real_commit(session)

    monkeypatch.setattr(intake, "record_lead", record)
    monkeypatch.setattr(Session, "commit", commit)
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
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN RAISE EXCEPTION 'commit refused'; END $$")
        conn.execute("CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON events "
                     "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse()")
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
    monkeypatch.setattr(inbox.Producer, "send_ingest", lambda self, event_id: sent.append(
        event_id) or False)
    headers = {**funnel.bearer(), "webhook-id": "w-1"}
    first = client.post(funnel.url, json=LEAD, headers=headers)
    again = client.post(funnel.url, json=LEAD, headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert sent == [first.json()["event_id"]] * 2
