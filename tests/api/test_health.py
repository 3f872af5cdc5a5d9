"""Health, readiness, metrics, the OpenAPI document, and the refusal to start unconfigured."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.app import ConfigurationError, create_app
from tests import services
from worker import runtime


def test_healthz_answers_while_the_process_is_up(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_checks_the_database_and_the_broker(client):
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "database": "ok", "broker": "ok"}


@pytest.mark.parametrize("env, down", [
    ({"DATABASE_URL": services.pg_url("cc_down").replace(":5432", ":1")}, "database"),
    ({"REDIS_URL": "redis://127.0.0.1:1/0"}, "broker"),
])
def test_readyz_answers_503_when_a_dependency_is_down(service_env, monkeypatch, env, down):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runtime.reset()
    with TestClient(create_app()) as client:
        r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["status"] == "unavailable" and r.json()[down] == "unavailable"


def test_metrics_count_requests_by_route_and_events_by_channel(client, funnel):
    client.post(funnel.url, json={"email": "a@example.com"}, headers=funnel.bearer())
    client.post(funnel.url, json={"email": "a@example.com"}, headers={})
    client.get("/nowhere")
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert ('casecredits_http_requests_total{method="POST",route="/v1/hooks/{source_id}",'
            'status="202"}') in text
    assert 'route="/v1/hooks/{source_id}",status="401"' in text
    assert 'route="unmatched",status="404"' in text
    assert 'casecredits_events_total{channel="funnel",status="received"}' in text
    assert "a@example.com" not in text and funnel.id not in text


def test_the_openapi_document_describes_every_endpoint(client):
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    assert set(paths) == {
        "/v1/hooks/{source_id}", "/v1/accounts/{account_id}/credits",
        "/v1/accounts/{account_id}/ledger", "/v1/accounts/{account_id}/events/{event_id}",
        "/v1/accounts/{account_id}/profiles", "/v1/accounts/{account_id}/profiles/{profile_id}",
        "/healthz", "/readyz", "/metrics"}
    hook = paths["/v1/hooks/{source_id}"]["post"]
    assert set(hook["responses"]) == {"200", "202", "400", "401", "404", "409", "410", "413",
                                      "415", "422", "503"}
    assert set(hook["requestBody"]["content"]) == {"application/json",
                                                   "application/x-www-form-urlencoded"}
    assert {"sourceToken", "standardWebhooks", "internalToken"} <= set(
        doc["components"]["securitySchemes"])
    credits = paths["/v1/accounts/{account_id}/credits"]["get"]
    assert credits["security"] == [{"internalToken": []}]
    assert credits["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"}


def test_unknown_routes_and_methods_answer_json_errors(client):
    assert client.get("/nowhere").json() == {"error": "not_found", "message": "Not Found"}
    r = client.get("/v1/hooks/src_x")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


def test_production_refuses_to_start_without_an_internal_token(service_env, monkeypatch):
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.delenv("INTERNAL_API_TOKEN")
    runtime.reset()
    with pytest.raises(ConfigurationError, match="INTERNAL_API_TOKEN"):
        create_app()
    monkeypatch.setenv("INTERNAL_API_TOKEN", "  ")
    runtime.reset()
    with pytest.raises(ConfigurationError):
        create_app()
    monkeypatch.setenv("INTERNAL_API_TOKEN", "a-real-token")
    runtime.reset()
    assert create_app().title == "casecredits"
