"""POST /v1/hooks/{source_id} with the real app and database: what is stored, what is refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from db import intake, sources
from db.engine import session_scope
from db.models import ClientProfile, Event
from schemas.common import Channel
from tests.api.conftest import (
    ACCOUNT,
    OTHER_ACCOUNT,
    as_json,
    count,
    events,
    nothing_stored,
    queued,
    signed,
)
from worker import runtime

LEAD = {"firstName": "Ada", "lastName": "Lovelace", "Email": "ADA@Example.com",
        "phone_number": "(415) 555-2671", "source": "manual", "account_id": OTHER_ACCOUNT}


def test_a_signed_funnel_lead_is_committed_then_queued(client, factory, funnel, service_env):
    body = as_json(LEAD)
    r = client.post(funnel.url, content=body, headers=signed(funnel.secret, body, "msg_1"))
    assert r.status_code == 202, r.text
    assert r.json() == {"event_id": r.json()["event_id"], "status": "accepted"}
    [event] = events(factory)
    assert event.id == r.json()["event_id"]
    assert (event.account_id, event.channel, event.source_id) == (ACCOUNT, "funnel", funnel.id)
    assert (event.status, event.external_id) == ("received", "msg_1")
    assert event.raw_body == body.decode()
    assert event.payload is not None
    assert event.payload["email"] == "ada@example.com"
    assert event.payload["phone"] == "(415) 555-2671"  # checked; the worker normalises it
    assert event.payload["extra"] == {"source": "manual", "account_id": OTHER_ACCOUNT}
    assert queued(service_env["REDIS_URL"], service_env["BROKER_NAMESPACE"]) == 1
    with session_scope(factory) as s:  # what the worker's ingest_lead does with it
        outcome = intake.ingest_lead(s, event.id, now=datetime.now(UTC))
    assert outcome is not None and outcome.profile is not None
    assert outcome.profile["phone"] == "+14155552671"
    with session_scope(factory) as s:
        profile = s.get(ClientProfile, s.get(Event, event.id).profile_id)
        assert profile.phone == "+14155552671" and profile.email == "ada@example.com"


def test_a_form_encoded_website_lead_with_a_bearer_token(client, factory, website):
    body = urlencode({"fname": "Grace", "lname": "Hopper", "email_address": "grace@example.com",
                      "source": "manual"})
    r = client.post(website.url, content=body, headers={
        **website.bearer(), "content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 202, r.text
    [event] = events(factory)
    assert (event.channel, event.account_id, event.status) == ("website", ACCOUNT, "received")
    assert event.external_id is not None and event.external_id.startswith("gen_")
    assert event.payload is not None and event.payload["first_name"] == "Grace"


def test_the_same_webhook_id_again_answers_200_with_the_same_event(client, factory, funnel):
    body = as_json(LEAD)
    first = client.post(funnel.url, content=body, headers=signed(funnel.secret, body, "msg_1"))
    again = client.post(funnel.url, content=body, headers=signed(funnel.secret, body, "msg_1"))
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json() == {"event_id": first.json()["event_id"], "status": "duplicate"}
    assert count(factory, Event) == 1


def test_the_same_webhook_id_on_another_source_is_another_event(client, factory, funnel,
                                                                 website):
    body = as_json(LEAD)
    a = client.post(funnel.url, content=body, headers=signed(funnel.secret, body, "msg_1"))
    b = client.post(website.url, content=body, headers=signed(website.secret, body, "msg_1"))
    assert (a.status_code, b.status_code) == (202, 202)
    assert a.json()["event_id"] != b.json()["event_id"]


def test_bearer_posts_without_a_webhook_id_are_each_an_event(client, factory, funnel):
    for _ in range(2):
        r = client.post(funnel.url, json=LEAD, headers=funnel.bearer())
        assert r.status_code == 202
    assert count(factory, Event) == 2


def test_a_bearer_post_with_a_webhook_id_is_idempotent_on_it(client, factory, funnel):
    headers = {**funnel.bearer(), "webhook-id": "zap-42"}
    codes = [client.post(funnel.url, json=LEAD, headers=headers).status_code for _ in range(2)]
    assert codes == [202, 200]
    assert count(factory, Event) == 1


def _old(secret: str, body: bytes) -> dict[str, str]:
    return signed(secret, body, "msg_1", at=datetime.now(UTC) - timedelta(minutes=10))


@pytest.mark.parametrize("case, headers_for, words", [
    ("wrong signature", lambda s, o, b: signed(sources.new_secret(), b, "msg_1"),
     "does not match"),
    ("signature of another source", lambda s, o, b: signed(o.secret, b, "msg_1"),
     "does not match"),
    ("timestamp 10 minutes old", lambda s, o, b: _old(s.secret, b), "5 minutes"),
    ("token of another source", lambda s, o, b: {**o.bearer(), "content-type": "application/json"},
     "does not match"),
    ("no credentials", lambda s, o, b: {"content-type": "application/json"},
     "missing credentials"),
    ("signature without its headers", lambda s, o, b: {"webhook-signature": "v1,AAAA",
                                                       "content-type": "application/json"},
     "needs the webhook-id"),
    ("garbled signature", lambda s, o, b: {**signed(s.secret, b, "msg_1"),
                                           "webhook-signature": "nonsense"}, "v1,"),
    ("timestamp not a number", lambda s, o, b: {**signed(s.secret, b, "msg_1"),
                                                "webhook-timestamp": "yesterday"}, "Unix time"),
    ("basic auth", lambda s, o, b: {"authorization": "Basic dXNlcjpwYXNz",
                                    "content-type": "application/json"}, "Bearer"),
])
def test_bad_credentials_answer_401_and_store_nothing(client, factory, funnel, other_source,
                                                      case, headers_for, words):
    body = as_json(LEAD)
    r = client.post(funnel.url, content=body, headers=headers_for(funnel, other_source, body))
    assert r.status_code == 401, case
    assert r.json()["error"] == "unauthorized" and words in r.json()["message"]
    assert other_source.id not in r.text and OTHER_ACCOUNT not in r.text
    assert nothing_stored(factory)


def test_a_signature_of_one_source_never_opens_another(client, factory, funnel, other_source):
    body = as_json(LEAD)
    r = client.post(other_source.url, content=body,
                    headers=signed(funnel.secret, body, "msg_1"))
    assert r.status_code == 401
    assert funnel.id not in r.text and ACCOUNT not in r.text
    assert nothing_stored(factory)


@pytest.mark.parametrize("source_id", ["src_" + "0" * 32, "nope", "a" * 300, "src_%00x",
                                       "src_caf%C3%A9"])
def test_an_unknown_source_answers_404(client, factory, accounts, source_id):
    r = client.post(f"/v1/hooks/{source_id}", json=LEAD,
                    headers={"Authorization": "Bearer x"})
    assert r.status_code == 404
    assert r.json() == {"error": "unknown_source", "message": "no source with this id"}
    assert nothing_stored(factory)


def test_a_disabled_source_answers_410_to_its_own_credentials(client, factory, funnel):
    with session_scope(factory) as s:
        sources.disable(s, funnel.id)
    body = as_json(LEAD)
    r = client.post(funnel.url, content=body, headers=signed(funnel.secret, body, "msg_1"))
    assert r.status_code == 410 and r.json()["error"] == "source_disabled"
    wrong = client.post(funnel.url, content=body,
                        headers=signed(sources.new_secret(), body, "msg_1"))
    assert wrong.status_code == 401
    assert nothing_stored(factory)


def test_a_body_over_64_kib_answers_413(client, factory, funnel):
    body = as_json({**LEAD, "notes": "x" * (65 * 1024)})
    r = client.post(funnel.url, content=body, headers=signed(funnel.secret, body, "msg_1"))
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"
    assert nothing_stored(factory)


def test_a_chunked_body_over_64_kib_answers_413(client, factory, funnel):
    def chunks():
        yield b'{"email": "a@example.com", "notes": "'
        for _ in range(70):
            yield b"x" * 1024
        yield b'"}'

    r = client.post(funnel.url, content=chunks(),
                    headers={**funnel.bearer(), "content-type": "application/json"})
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 413
    assert nothing_stored(factory)


def test_a_body_of_exactly_64_kib_is_taken(client, factory, funnel):
    prefix = as_json({**LEAD, "notes": ""})[:-2]
    body = prefix + b"x" * (64 * 1024 - len(prefix) - 2) + b'"}'
    assert len(body) == 64 * 1024
    r = client.post(funnel.url, content=body, headers=signed(funnel.secret, body, "msg_1"))
    assert r.status_code == 202


@pytest.mark.parametrize("content_type", ["text/plain", "multipart/form-data; boundary=x",
                                          "", "application/json; charset=latin-1",
                                          "application/xml"])
def test_other_content_types_answer_415(client, factory, funnel, content_type):
    body = b"first_name=Ada"
    headers = signed(funnel.secret, body, "msg_1", content_type=content_type)
    if not content_type:
        del headers["content-type"]
    r = client.post(funnel.url, content=body, headers=headers)
    assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"
    assert "application/json" in r.json()["message"] or "UTF-8" in r.json()["message"]
    assert nothing_stored(factory)


@pytest.mark.parametrize("body, content_type, loc", [
    (b'{"company": "Acme", "source": "manual"}', "application/json", []),
    (b'{"Email": "not-an-email"}', "application/json", ["email"]),
    (b'{"first_name": ', "application/json", []),
    (b'["a@example.com"]', "application/json", []),
    (b"comment=hello", "application/x-www-form-urlencoded", []),
])
def test_an_unusable_lead_answers_422_and_is_kept_as_invalid(client, factory, funnel, body,
                                                             content_type, loc):
    r = client.post(funnel.url, content=body,
                    headers=signed(funnel.secret, body, "msg_1", content_type=content_type))
    assert r.status_code == 422, r.text
    answer = r.json()
    assert answer["error"] == "invalid_lead" and answer["errors"][0]["loc"] == loc
    [event] = events(factory)
    assert event.id == answer["event_id"]
    assert (event.status, event.channel, event.account_id) == ("invalid", "funnel", ACCOUNT)
    assert event.raw_body == body.decode() and event.errors == answer["errors"]
    assert event.content_type == content_type
    again = client.post(funnel.url, content=body,
                        headers=signed(funnel.secret, body, "msg_1", content_type=content_type))
    assert again.status_code == 422  # the first answer again, and nothing more stored
    assert (again.json()["event_id"], again.json()["errors"]) == (event.id, answer["errors"])
    assert count(factory, Event) == 1


def test_a_webhook_id_reused_for_another_body_answers_409(client, factory, funnel):
    headers = {**funnel.bearer(), "webhook-id": "zap-1"}
    first = client.post(funnel.url, json=LEAD, headers=headers)
    other = client.post(funnel.url, json={**LEAD, "Email": "someone@example.com"},
                        headers=headers)
    assert (first.status_code, other.status_code) == (202, 409)
    assert other.json()["error"] == "webhook_id_reused"
    assert other.json()["event_id"] == first.json()["event_id"]
    assert count(factory, Event) == 1


def test_a_malformed_webhook_id_answers_400(client, factory, funnel):
    r = client.post(funnel.url, json=LEAD, headers={**funnel.bearer(), "webhook-id": "x" * 200})
    assert r.status_code == 400 and r.json()["error"] == "invalid_webhook_id"
    assert nothing_stored(factory)


def test_a_rotated_secret_keeps_working_for_24_hours(client, factory, funnel, monkeypatch):
    with session_scope(factory) as s:
        new = sources.rotate(s, funnel.id, now=datetime.now(UTC)).secret
    body = as_json(LEAD)
    for i, secret in enumerate((funnel.secret, new)):
        r = client.post(funnel.url, content=body, headers=signed(secret, body, f"m{i}"))
        assert r.status_code == 202
    later = datetime.now(UTC) + timedelta(hours=24, minutes=1)
    monkeypatch.setattr(runtime, "clock", lambda: later)
    old = client.post(funnel.url, content=body, headers=signed(funnel.secret, body, "m3"))
    assert old.status_code == 401
    assert client.post(funnel.url, content=body,
                       headers=signed(new, body, "m4")).status_code == 202


def test_personal_data_never_reaches_the_logs(service_env, funnel, capsys):
    body = as_json({**LEAD, "date_of_birth": "1815-12-10"})
    with TestClient(create_app()) as client:  # its log handler writes to the captured stderr
        accepted = client.post(funnel.url, content=body,
                               headers=signed(funnel.secret, body, "msg_1")).json()["event_id"]
        client.post(funnel.url, content=b'{"Email": "bad@@example.com", "name": "Ada Lovelace"}',
                    headers={**funnel.bearer(), "content-type": "application/json"})
        # a sender who puts a contact where the source id goes: refused, and logged scrubbed
        assert client.post("/v1/hooks/ada@example.com", json=LEAD).status_code == 404
    logged = capsys.readouterr().err
    committed = [json.loads(line) for line in logged.splitlines() if "inbox.committed" in line]
    assert [accepted] in [line["event_ids"] for line in committed]
    assert {funnel.id} == {s for line in committed for s in line["source_ids"]}
    assert "hook.invalid" in logged and "hook.refused" in logged
    for secret in ("Ada", "Lovelace", "ada@example.com", "ADA@Example.com", "(415) 555-2671",
                   "+14155552671", "4155552671", "1815-12-10", "bad@@example.com",
                   funnel.token, funnel.secret):
        assert secret not in logged


def test_a_payload_channel_never_decides_the_source(client, factory, website):
    r = client.post(website.url, json={**LEAD, "channel": "funnel", "source_id": "src_x"},
                    headers=website.bearer())
    assert r.status_code == 202
    [event] = events(factory)
    assert (event.channel, event.source_id) == (Channel.website.value, website.id)
    assert json.loads(event.raw_body or "{}")["source"] == "manual"
