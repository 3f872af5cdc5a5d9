"""Sources and their credentials: db.sources and the ``casecredits source`` commands."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from db import sources
from db.engine import session_scope
from db.errors import NotFound, Rejected
from db.models import Source
from schemas.common import Channel
from tests.api.conftest import ACCOUNT
from tests.procs import cli

NOW = datetime(2026, 11, 10, 12, tzinfo=UTC)


def test_a_source_gets_an_id_a_secret_and_a_token_stored_as_a_hash(factory, accounts):
    with session_scope(factory) as s:
        created = sources.register(s, ACCOUNT, kind=Channel.funnel, name=" GHL ", now=NOW)
    assert created.source.id.startswith("src_") and len(created.source.id) == 36
    assert created.secret.startswith("whsec_")
    assert len(base64.b64decode(created.secret.removeprefix("whsec_"))) >= 24
    assert created.token
    with session_scope(factory) as s:
        row = s.execute(select(Source)).scalar_one()
        assert row.name == "GHL" and row.kind == "funnel" and row.enabled
        assert row.token_hash == sources.hash_token(created.token)
        assert created.token not in (row.token_hash, row.secret, row.name)
        assert sources.token_matches(row, created.token)
        assert not sources.token_matches(row, created.token + "x")


@pytest.mark.parametrize("kind, name, error", [
    (Channel.manual, "x", Rejected), (Channel.website, "", Rejected),
    (Channel.website, "x" * 201, Rejected)])
def test_a_source_is_a_website_or_a_funnel_with_a_name(factory, accounts, kind, name, error):
    with session_scope(factory) as s, pytest.raises(error):
        sources.register(s, ACCOUNT, kind=kind, name=name, now=NOW)


def test_a_source_belongs_to_an_existing_account(factory, accounts):
    with session_scope(factory) as s, pytest.raises(NotFound):
        sources.register(s, "nobody", kind=Channel.website, name="x", now=NOW)


def test_rotation_keeps_the_old_secret_for_24_hours(factory, accounts):
    with session_scope(factory) as s:
        created = sources.register(s, ACCOUNT, kind=Channel.website, name="x", now=NOW)
        rotated = sources.rotate(s, created.source.id, now=NOW)
        source = rotated.source
        assert rotated.token is None
        assert sources.verifying_secrets(source, now=NOW + timedelta(hours=23)) == [
            rotated.secret, created.secret]
        assert sources.verifying_secrets(source, now=NOW + timedelta(hours=24)) == [
            rotated.secret]
        assert sources.token_matches(source, created.token or "")
        with_token = sources.rotate(s, source.id, now=NOW, token=True)
        assert with_token.token and sources.token_matches(source, with_token.token)
        assert not sources.token_matches(source, created.token or "")


def test_a_disabled_source_stays_disabled_and_cannot_rotate(factory, accounts):
    with session_scope(factory) as s:
        created = sources.register(s, ACCOUNT, kind=Channel.website, name="x", now=NOW)
        sources.disable(s, created.source.id)
        assert not sources.disable(s, created.source.id).enabled
        with pytest.raises(Rejected):
            sources.rotate(s, created.source.id, now=NOW)
        with pytest.raises(NotFound):
            sources.disable(s, "src_nope")


def test_the_source_commands_as_an_operator_runs_them(service_env, accounts):
    added = cli("source", "add", ACCOUNT, "--kind", "funnel", "--name", "ClickFunnels",
                "--json", env=service_env)
    assert added.returncode == 0, added.stderr
    creds = json.loads(added.stdout)
    assert set(creds) == {"source_id", "kind", "secret", "token"}
    assert creds["kind"] == "funnel" and creds["secret"].startswith("whsec_")
    listed = cli("source", "list", ACCOUNT, "--json", env=service_env)
    [view] = json.loads(listed.stdout)
    assert view["source_id"] == creds["source_id"] and view["enabled"] is True
    assert creds["secret"] not in listed.stdout and creds["token"] not in listed.stdout
    rotated = json.loads(cli("source", "rotate", creds["source_id"], "--json",
                             env=service_env).stdout)
    assert rotated["secret"] != creds["secret"] and "token" not in rotated
    assert rotated["previous_secret_expires_at"]
    disabled = cli("source", "disable", creds["source_id"], env=service_env)
    assert disabled.returncode == 0 and "disabled" in disabled.stdout
    human = cli("source", "list", ACCOUNT, env=service_env)
    assert creds["source_id"] in human.stdout and creds["secret"] not in human.stdout


@pytest.mark.parametrize("args, words", [
    (("source", "add", "nobody", "--kind", "website", "--name", "x"), "no account"),
    (("source", "add", ACCOUNT, "--kind", "manual", "--name", "x"), "manual"),
    (("source", "rotate", "src_nope"), "no source"),
    (("source", "disable", "src_nope"), "no source"),
])
def test_source_mistakes_print_one_line_and_exit_non_zero(service_env, accounts, args, words):
    result = cli(*args, env=service_env)
    assert result.returncode != 0
    assert words in result.stderr and "Traceback" not in result.stderr
