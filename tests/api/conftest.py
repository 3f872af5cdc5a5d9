"""The real app on a real database (SQLite and PostgreSQL) and a Redis namespace per test."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook

from api.app import create_app
from db import sources
from db.engine import session_scope
from db.models import ClientProfile, Event, LedgerEntry
from schemas.common import Channel
from tests.factories import setup_account

ACCOUNT = "acme"
OTHER_ACCOUNT = "globex"
INTERNAL = {"Authorization": "Bearer test-internal-token"}


@dataclass(frozen=True)
class Src:
    id: str
    account_id: str
    kind: str
    secret: str
    token: str

    @property
    def url(self) -> str:
        return f"/v1/hooks/{self.id}"

    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def add_source(factory: sessionmaker[Session], account_id: str, kind: Channel,
               name: str = "form") -> Src:
    with session_scope(factory) as s:
        created = sources.register(s, account_id, kind=kind, name=name,
                                   now=datetime.now(UTC))
        assert created.token is not None
        return Src(created.source.id, account_id, kind.value, created.secret, created.token)


def signed(secret: str, body: bytes | str, webhook_id: str, *,
           at: datetime | None = None, content_type: str = "application/json"
           ) -> dict[str, str]:
    """Headers of a Standard Webhook signed with ``secret``, as a sender makes them."""
    at = at or datetime.now(UTC)
    text = body.decode() if isinstance(body, bytes) else body
    return {"webhook-id": webhook_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": Webhook(secret).sign(webhook_id, at, text),
            "content-type": content_type}


def as_json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def count(factory: sessionmaker[Session], model: type, *where: Any) -> int:
    with session_scope(factory) as s:
        return int(s.execute(select(func.count()).select_from(model).where(*where))
                   .scalar_one())


def events(factory: sessionmaker[Session]) -> list[Event]:
    with session_scope(factory) as s:
        return list(s.execute(select(Event).order_by(Event.received_at)).scalars())


def nothing_stored(factory: sessionmaker[Session]) -> bool:
    return (count(factory, Event) == 0 and count(factory, ClientProfile) == 0
            and count(factory, LedgerEntry, LedgerEntry.kind == "charge") == 0)


def refuse_commits(pg_url: str) -> None:
    """Make PostgreSQL itself fail every COMMIT that stored an event (a deferred
    constraint trigger), rather than a mock."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN RAISE EXCEPTION 'commit refused'; END $$")
        conn.execute("CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON events "
                     "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse()")


def lose_commits(monkeypatch: pytest.MonkeyPatch, database_url: str, pg_url: str) -> None:
    """Make every inbox write of events fail as a lost server fails it, before it is
    committed. On PostgreSQL, where a batch is one statement in autocommit (its
    commit is part of its answer), the backend is terminated just before that
    statement (a connection really dropped, so psycopg's own error comes up); on
    SQLite, whose file cannot go away, SQLAlchemy's ``OperationalError`` is raised
    at the commit."""
    import psycopg
    from sqlalchemy import Connection
    from sqlalchemy.exc import OperationalError

    from db import lead_inbox

    if database_url == pg_url:
        real_driver = lead_inbox._DriverWrite.record_checked

        def drop_then_record(self: Any, checked: Any) -> tuple[set[str], set[str]]:
            with psycopg.connect(pg_url, autocommit=True) as admin:
                # waits (up to 5 s) until the backend is gone
                admin.execute("SELECT pg_terminate_backend(%s, 5000)",
                              (self.cursor.connection.info.backend_pid,))
            return real_driver(self, checked)

        monkeypatch.setattr(lead_inbox._DriverWrite, "record_checked", drop_then_record)
        return
    real_record, real_commit = lead_inbox._ConnectionWrite.record_leads, Connection.commit

    def record(self: Any, rows: Any) -> set[str]:
        self.conn.info["wrote_events"] = True
        return real_record(self, rows)

    def commit(conn: Connection) -> None:
        if conn.info.pop("wrote_events", False):
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"))
        real_commit(conn)

    monkeypatch.setattr(lead_inbox._ConnectionWrite, "record_leads", record)
    monkeypatch.setattr(Connection, "commit", commit)


def queued(redis_url: str, namespace: str, queue: str = "leads") -> int:
    return int(redis.Redis.from_url(redis_url).hlen(f"{namespace}:{queue}.msgs"))


@pytest.fixture
def accounts(factory: sessionmaker[Session], service_env: dict[str, str]) -> None:
    now = datetime.now(UTC)
    setup_account(factory, ACCOUNT, monthly=3, now=now)
    setup_account(factory, OTHER_ACCOUNT, monthly=3, now=now)


@pytest.fixture
def funnel(factory: sessionmaker[Session], accounts: None) -> Src:
    return add_source(factory, ACCOUNT, Channel.funnel, "ClickFunnels")


@pytest.fixture
def website(factory: sessionmaker[Session], accounts: None) -> Src:
    return add_source(factory, ACCOUNT, Channel.website, "contact form")


@pytest.fixture
def other_source(factory: sessionmaker[Session], accounts: None) -> Src:
    return add_source(factory, OTHER_ACCOUNT, Channel.funnel, "their funnel")


@pytest.fixture
def client(service_env: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c
