"""The read endpoints: the internal token, the views, paging, and 404 across accounts."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from db import intake, queries
from db.engine import session_scope
from tests.api.conftest import ACCOUNT, INTERNAL, OTHER_ACCOUNT
from tests.factories import create, manual_payload
from worker import runtime


def _lead(client, source, **fields) -> str:
    r = client.post(source.url, json=fields or {"first_name": "Ada", "email": "a@example.com"},
                    headers=source.bearer())
    assert r.status_code == 202, r.text
    return r.json()["event_id"]


def _ingest(factory, event_id: str) -> str:
    with session_scope(factory) as s:
        outcome = intake.ingest_lead(s, event_id, now=datetime.now(UTC))
        assert outcome is not None and outcome.profile_id is not None
        return outcome.profile_id


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": "Basic dGVzdA=="}])
def test_reads_need_the_internal_token(client, accounts, headers):
    r = client.get(f"/v1/accounts/{ACCOUNT}/credits", headers=headers)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"


def test_reads_are_off_without_a_configured_token(service_env, accounts, monkeypatch):
    monkeypatch.delenv("INTERNAL_API_TOKEN")
    runtime.reset()
    with TestClient(create_app()) as client:
        r = client.get(f"/v1/accounts/{ACCOUNT}/credits", headers=INTERNAL)
    assert r.status_code == 401 and "INTERNAL_API_TOKEN is not set" in r.json()["message"]


def test_a_source_token_does_not_open_the_reads(client, funnel):
    r = client.get(f"/v1/accounts/{ACCOUNT}/credits", headers=funnel.bearer())
    assert r.status_code == 401


def test_credits_are_the_cli_view(client, factory, accounts):
    r = client.get(f"/v1/accounts/{ACCOUNT}/credits", headers=INTERNAL)
    assert r.status_code == 200
    with session_scope(factory) as s:
        expected = queries.credits(s, ACCOUNT, now=datetime.now(UTC)).model_dump(mode="json")
    assert r.json() == expected
    assert r.json()["monthly_remaining"] == 3 and r.json()["total_available"] == 3


def test_the_ledger_pages_newest_first(client, factory, accounts):
    now = datetime.now(UTC)
    for i in range(2):
        create(factory, manual_payload(ACCOUNT, f"req-{i}"), now=now)
    first = client.get(f"/v1/accounts/{ACCOUNT}/ledger", params={"limit": 2},
                       headers=INTERNAL).json()
    assert [e["kind"] for e in first["entries"]] == ["charge", "charge"]
    assert first["next_cursor"]
    rest = client.get(f"/v1/accounts/{ACCOUNT}/ledger",
                      params={"limit": 2, "cursor": first["next_cursor"]}, headers=INTERNAL)
    assert rest.status_code == 200
    assert [e["kind"] for e in rest.json()["entries"]] == ["grant"]
    assert rest.json()["next_cursor"] is None


def test_an_event_shows_its_outcome(client, factory, funnel):
    event_id = _lead(client, funnel)
    r = client.get(f"/v1/accounts/{ACCOUNT}/events/{event_id}", headers=INTERNAL)
    assert r.status_code == 200
    assert (r.json()["status"], r.json()["source"]) == ("received", "funnel")
    profile_id = _ingest(factory, event_id)
    view = client.get(f"/v1/accounts/{ACCOUNT}/events/{event_id}", headers=INTERNAL).json()
    assert view["status"] == "created" and view["profile_id"] == profile_id
    assert view["charged_bucket"] is None
    for key in ("status", "source", "profile_id", "charged_bucket", "reason", "event_id",
                "errors"):
        assert key in view  # the fields of `event show --json`


def test_an_invalid_lead_shows_its_errors(client, funnel):
    r = client.post(funnel.url, json={"company": "Acme"}, headers=funnel.bearer())
    view = client.get(f"/v1/accounts/{ACCOUNT}/events/{r.json()['event_id']}",
                      headers=INTERNAL).json()
    assert view["status"] == "invalid" and view["errors"] == r.json()["errors"]


def test_profiles_show_their_source_and_page_newest_first(client, factory, funnel, website):
    funnel_profile = _ingest(factory, _lead(client, funnel, first_name="Ada"))
    website_profile = _ingest(factory, _lead(client, website, email="grace@example.com"))
    one = client.get(f"/v1/accounts/{ACCOUNT}/profiles/{funnel_profile}", headers=INTERNAL)
    assert one.status_code == 200
    assert (one.json()["source"], one.json()["source_id"]) == ("funnel", funnel.id)
    assert one.json()["first_name"] == "Ada"
    page = client.get(f"/v1/accounts/{ACCOUNT}/profiles", params={"limit": 1},
                      headers=INTERNAL).json()
    assert [p["profile_id"] for p in page["profiles"]] == [website_profile]
    rest = client.get(f"/v1/accounts/{ACCOUNT}/profiles",
                      params={"limit": 1, "cursor": page["next_cursor"]}, headers=INTERNAL).json()
    assert [p["profile_id"] for p in rest["profiles"]] == [funnel_profile]
    only = client.get(f"/v1/accounts/{ACCOUNT}/profiles", params={"source": "website"},
                      headers=INTERNAL).json()
    assert [p["source"] for p in only["profiles"]] == ["website"]


def test_another_accounts_ids_answer_404(client, factory, funnel, other_source):
    theirs = _lead(client, other_source)
    their_profile = _ingest(factory, theirs)
    for path in (f"events/{theirs}", f"profiles/{their_profile}"):
        r = client.get(f"/v1/accounts/{ACCOUNT}/{path}", headers=INTERNAL)
        assert r.status_code == 404, path
        assert r.json() == {"error": "not_found", "message": "no such account, or no such id "
                                                             "in it"}
        assert OTHER_ACCOUNT not in r.text
    assert client.get(f"/v1/accounts/{OTHER_ACCOUNT}/events/{theirs}",
                      headers=INTERNAL).status_code == 200


@pytest.mark.parametrize("path", ["credits", "ledger", "profiles", "events/evt_x",
                                  "profiles/prf_x"])
def test_an_unknown_account_answers_404(client, accounts, path):
    r = client.get(f"/v1/accounts/nobody/{path}", headers=INTERNAL)
    assert r.status_code == 404 and r.json()["error"] == "not_found"


@pytest.mark.parametrize("cursor", ["!!", _cursor("not a number"), _cursor("2026-01-01|x"),
                                    "AAAA"])
def test_a_bad_cursor_answers_400_or_422(client, accounts, cursor):
    for path in ("ledger", "profiles"):
        r = client.get(f"/v1/accounts/{ACCOUNT}/{path}", params={"cursor": cursor},
                       headers=INTERNAL)
        assert r.status_code in (400, 422), (path, r.text)
        assert r.json()["error"] in ("bad_cursor", "invalid_request")


def test_a_cursor_with_a_nul_never_fails_the_server(client, accounts):
    cursor = _cursor("2026-01-01T00:00:00+00:00|a\x00b")
    r = client.get(f"/v1/accounts/{ACCOUNT}/profiles", params={"cursor": cursor},
                   headers=INTERNAL)
    assert r.status_code in (200, 400)  # SQLite takes it; PostgreSQL refuses text with NUL


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 501}, {"limit": "x"},
                                    {"source": "manual!"}])
def test_bad_parameters_answer_422_with_a_json_error(client, accounts, params):
    r = client.get(f"/v1/accounts/{ACCOUNT}/profiles", params=params, headers=INTERNAL)
    assert r.status_code == 422
    assert r.json()["error"] == "invalid_request" and r.json()["errors"]
