"""``record_checked`` writes a webhook only while its source is the one it was checked
against: any credential column that changed, or a disable, keeps the row out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from db import intake, lead_inbox, sources
from db.engine import session_scope
from db.lead_inbox import SourceRow
from db.models import Event, Source
from schemas.common import Channel
from schemas.leads import lead_from_body
from tests.factories import setup_account

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@pytest.fixture
def source(factory: sessionmaker[Session]) -> SourceRow:
    setup_account(factory, "acme", now=NOW)
    with session_scope(factory) as s:
        created = sources.register(s, "acme", kind=Channel.funnel, name="f", now=NOW)
        sources.rotate(s, created.source.id, now=NOW)  # a previous secret and its expiry
        source_id = created.source.id
    with lead_inbox.transaction(factory.kw["bind"]) as tx:
        return tx.find_sources([source_id])[source_id]


def row(source: SourceRow, webhook_id: str) -> dict[str, Any]:
    return intake.lead_row(source_id=source.id, account_id=source.account_id,
                           channel=source.kind, webhook_id=webhook_id, raw_body="{}",
                           content_type="application/json",
                           lead=lead_from_body({"name": "Ada Lovelace"}), errors=None, now=NOW)


def stored(factory: sessionmaker[Session]) -> int:
    with session_scope(factory) as s:
        return int(s.execute(select(func.count()).select_from(Event)).scalar_one())


def test_a_row_whose_source_is_unchanged_is_written(factory, source):
    first, again = row(source, "w1"), row(source, "w1")
    with lead_inbox.transaction(factory.kw["bind"]) as tx:
        written, changed = tx.record_checked([(source, first), (source, again)])
    assert (written, changed) == ({first["id"]}, set())  # the repeat is neither
    assert stored(factory) == 1


@pytest.mark.parametrize("column, value", [
    ("enabled", False),
    ("secret", "whsec_other"),
    ("previous_secret", None),
    ("previous_secret_expires_at", NOW + timedelta(hours=1)),
    ("token_hash", "0" * 64),
    ("account_id", "globex"),
])
def test_a_row_whose_source_changed_is_not_written(factory, source, column, value):
    if column == "account_id":
        setup_account(factory, "globex", now=NOW)
    with session_scope(factory) as s:
        s.execute(update(Source).where(Source.id == source.id).values({column: value}))
    checked_before = row(source, "w1")
    with lead_inbox.transaction(factory.kw["bind"]) as tx:
        written, changed = tx.record_checked([(source, checked_before)])
    assert (written, changed) == (set(), {checked_before["id"]})
    assert stored(factory) == 0


def test_a_batch_commits_with_its_statement_and_its_connection_goes_back_transactional(
        pg_url):
    """On PostgreSQL a batch is one statement in autocommit: another connection sees it
    before the block ends, and the pooled connection goes back with autocommit off."""
    engine = create_engine(pg_url, pool_size=1, max_overflow=0)
    factory = sessionmaker(engine)
    try:
        setup_account(factory, "acme", now=NOW)
        with session_scope(factory) as s:
            source_id = sources.register(s, "acme", kind=Channel.funnel, name="f",
                                         now=NOW).source.id
        with lead_inbox.transaction(engine) as tx:
            source = tx.find_sources([source_id])[source_id]
            written, _ = tx.record_checked([(source, row(source, "w1"))])
            with psycopg.connect(pg_url) as other:
                assert other.execute("SELECT count(*) FROM events").fetchone() == (1,)
        assert len(written) == 1
        with engine.connect() as conn:  # the one pooled connection
            assert conn.connection.driver_connection.autocommit is False
    finally:
        engine.dispose()
