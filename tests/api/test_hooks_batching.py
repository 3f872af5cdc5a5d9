"""Concurrent webhooks are stored together (one transaction, one commit), and a source
remembered between requests never lets a disabled source or old credentials through."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import redis
from dramatiq.message import Message
from fastapi import FastAPI

from api import inbox
from api.app import create_app
from db import sources
from db.engine import session_scope
from db.models import Event
from tests.api.conftest import (
    as_json,
    count,
    events,
    lose_commits,
    nothing_stored,
    queued,
    refuse_commits,
    signed,
)

LEAD = {"first_name": "Ada", "email": "ada@example.com"}


def post_all(app: FastAPI, requests: Sequence[tuple[str, bytes, dict[str, str]]]
             ) -> list[httpx.Response]:
    """Send the requests at once, as concurrent clients would."""
    async def send() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return list(await asyncio.gather(*(
                client.post(url, content=body, headers=headers)
                for url, body, headers in requests)))
    return asyncio.run(send())


@pytest.fixture
def batch_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    real = inbox.Inbox.store_all

    def store_all(self: inbox.Inbox, batch: Sequence[inbox.Incoming]) -> list[Any]:
        sizes.append(len(batch))
        return real(self, batch)

    monkeypatch.setattr(inbox.Inbox, "store_all", store_all)
    return sizes


def test_concurrent_leads_are_one_event_per_webhook_id(service_env, factory, funnel,
                                                       batch_sizes):
    bodies = [as_json({**LEAD, "email": f"ada{i}@example.com"}) for i in range(8)]
    requests = [(funnel.url, body, signed(funnel.secret, body, f"w-{i}"))
                for i, body in enumerate(bodies)]
    requests.append((funnel.url, bodies[3], signed(funnel.secret, bodies[3], "w-3")))
    answers = post_all(create_app(), requests)
    assert sorted(r.status_code for r in answers) == [200] + [202] * 8
    repeat, first = answers[-1], answers[3]
    assert {first.status_code, repeat.status_code} == {200, 202}
    assert repeat.json()["event_id"] == first.json()["event_id"]
    assert max(batch_sizes) > 1  # stored together
    stored = events(factory)
    assert sorted(e.external_id or "" for e in stored) == [f"w-{i}" for i in range(8)]
    assert {r.json()["event_id"] for r in answers} == {e.id for e in stored}
    assert queued(service_env["REDIS_URL"], service_env["BROKER_NAMESPACE"]) >= 8


def test_a_batch_mixes_new_repeated_reused_and_invalid_webhooks(service_env, factory, funnel,
                                                                 client):
    body = as_json(LEAD)
    first = client.post(funnel.url, content=body, headers=signed(funnel.secret, body, "old"))
    other = as_json({**LEAD, "email": "grace@example.com"})
    invalid = b'{"email": "not an email"}'
    answers = post_all(create_app(), [
        (funnel.url, body, signed(funnel.secret, body, "old")),  # a resend
        (funnel.url, other, signed(funnel.secret, other, "old")),  # another body, same id
        (funnel.url, invalid, signed(funnel.secret, invalid, "bad")),
        (funnel.url, other, signed(funnel.secret, other, "new")),
    ])
    assert [r.status_code for r in answers] == [200, 409, 422, 202]
    assert answers[0].json()["event_id"] == answers[1].json()["event_id"] \
        == first.json()["event_id"]
    assert answers[2].json()["event_id"]
    assert count(factory, Event) == 3
    assert count(factory, Event, Event.status == "invalid") == 1


def test_a_commit_that_fails_answers_503_to_the_whole_batch(service_env, factory, funnel,
                                                            monkeypatch, pg_url, batch_sizes):
    lose_commits(monkeypatch, service_env["DATABASE_URL"], pg_url)
    bodies = [as_json({**LEAD, "email": f"ada{i}@example.com"}) for i in range(6)]
    answers = post_all(create_app(), [(funnel.url, body, signed(funnel.secret, body, f"w{i}"))
                                      for i, body in enumerate(bodies)])
    monkeypatch.undo()
    assert max(batch_sizes) > 1
    assert [r.status_code for r in answers] == [503] * 6
    assert all(r.json()["error"] == "unavailable" for r in answers)
    assert nothing_stored(factory)
    assert queued(service_env["REDIS_URL"], service_env["BROKER_NAMESPACE"]) == 0


def test_a_commit_postgresql_refuses_fails_every_request_of_the_batch(pg_url, service_env,
                                                                       request, batch_sizes):
    if service_env["DATABASE_URL"] != pg_url:
        pytest.skip("PostgreSQL only: a deferred trigger fails the commit itself")
    factory = request.getfixturevalue("factory")
    funnel = request.getfixturevalue("funnel")
    refuse_commits(pg_url)
    bodies = [as_json({**LEAD, "email": f"ada{i}@example.com"}) for i in range(6)]
    answers = post_all(create_app(), [(funnel.url, body, signed(funnel.secret, body, f"w{i}"))
                                      for i, body in enumerate(bodies)])
    assert max(batch_sizes) > 1
    for r in answers:
        assert r.status_code >= 500 and "commit refused" not in r.text
    assert nothing_stored(factory)
    assert queued(service_env["REDIS_URL"], service_env["BROKER_NAMESPACE"]) == 0


def test_a_source_disabled_after_use_answers_410_at_once(client, factory, funnel):
    body = as_json(LEAD)
    assert client.post(funnel.url, content=body,
                       headers=signed(funnel.secret, body, "m1")).status_code == 202
    with session_scope(factory) as s:
        sources.disable(s, funnel.id)
    r = client.post(funnel.url, content=body, headers=signed(funnel.secret, body, "m2"))
    assert r.status_code == 410 and r.json()["error"] == "source_disabled"
    r = client.post(funnel.url, json=LEAD, headers=funnel.bearer())
    assert r.status_code == 410
    assert count(factory, Event) == 1


def test_a_new_token_stops_the_old_one_at_once(client, factory, funnel):
    assert client.post(funnel.url, json=LEAD, headers=funnel.bearer()).status_code == 202
    with session_scope(factory) as s:
        new = sources.rotate(s, funnel.id, now=datetime.now(UTC), token=True).token
    old = client.post(funnel.url, json=LEAD, headers=funnel.bearer())
    assert old.status_code == 401
    assert client.post(funnel.url, json=LEAD,
                       headers={"Authorization": f"Bearer {new}"}).status_code == 202
    assert count(factory, Event) == 2


def test_a_new_secret_works_at_once(client, factory, funnel):
    body = as_json(LEAD)
    assert client.post(funnel.url, content=body,
                       headers=signed(funnel.secret, body, "m1")).status_code == 202
    with session_scope(factory) as s:
        new = sources.rotate(s, funnel.id, now=datetime.now(UTC)).secret
    r = client.post(funnel.url, content=body, headers=signed(new, body, "m2"))
    assert r.status_code == 202
    assert client.post(funnel.url, content=body,
                       headers=signed(funnel.secret, body, "m3")).status_code == 202  # grace
    assert count(factory, Event) == 3


def test_the_ingest_message_is_the_one_dramatiq_would_enqueue(client, funnel, service_env):
    r = client.post(funnel.url, json=LEAD, headers=funnel.bearer())
    assert r.status_code == 202
    ns = service_env["BROKER_NAMESPACE"]
    conn = redis.Redis.from_url(service_env["REDIS_URL"])
    [(redis_id, data)] = conn.hgetall(f"{ns}:leads.msgs").items()
    assert isinstance(redis_id, bytes) and isinstance(data, bytes)
    assert conn.lrange(f"{ns}:leads", 0, -1) == [redis_id]
    message = Message.decode(data)
    assert (message.queue_name, message.actor_name) == ("leads", "ingest_lead")
    assert list(message.args) == [{"event_id": r.json()["event_id"]}]
    assert message.kwargs == {}
    assert message.options == {"redis_message_id": redis_id.decode()}
    assert json.loads(data)["message_id"] == message.message_id
