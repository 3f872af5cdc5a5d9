"""The lead inbox on the HTTP side: sources looked up and webhooks stored, many at a time.

The web process gathers the webhooks of concurrent requests and writes them
here together: one ``INSERT ... ON CONFLICT (dedupe_key) DO NOTHING RETURNING
id`` that writes only the rows whose source is still the one each was checked
against, committed as one (group commit: on PostgreSQL the statement is its own
transaction, in autocommit; on SQLite the sources are read first, and the two
statements are committed together). Every statement is built once, at
import, with bound parameters, and runs on a plain pooled connection: no ORM
session, no recompiling per request; on PostgreSQL on psycopg's own connection
(:func:`transaction`). There the rows go as one JSON parameter
(``json_to_recordset``), so the statement text is the same for any batch.

A row the insert skips (the webhook-id came before, or twice in one batch) is
left to the one-at-a-time :func:`db.intake.record_lead`, which finds the first.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, bindparam, select, text
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from db.engine import driver_transaction
from db.models import Event, Source

_SOURCES = Source.__table__


@dataclass(frozen=True, slots=True)
class SourceRow:
    """The columns of a source a webhook is checked against, read without the ORM (cheap to
    build, and compared whole to tell whether the source changed)."""

    id: str
    account_id: str
    kind: str
    secret: str
    previous_secret: str | None
    previous_secret_expires_at: datetime | None
    token_hash: str
    enabled: bool


_SOURCE_COLUMNS = ("id", "account_id", "kind", "secret", "previous_secret",
                   "previous_secret_expires_at", "token_hash", "enabled")

#: the sources named in a batch of webhook URLs; on PostgreSQL as one array parameter
#: (the same statement text for any batch), elsewhere as an expanded IN list
_FIND_SOURCES = select(*(_SOURCES.c[name] for name in _SOURCE_COLUMNS)).where(
    _SOURCES.c.id.in_(bindparam("ids", expanding=True)))
_FIND_SOURCES_PG = (f"SELECT {', '.join(_SOURCE_COLUMNS)} FROM sources "  # noqa: S608 (ours)
                    "WHERE id = ANY(CAST({ids} AS varchar[]))")

#: the columns every stored webhook sets, and their PostgreSQL types; the others stay NULL
EVENT_COLUMNS: dict[str, str] = {
    "id": "varchar", "account_id": "varchar", "channel": "varchar", "source_id": "varchar",
    "dedupe_key": "varchar", "external_id": "varchar", "status": "varchar",
    "reason": "varchar", "payload": "json", "raw_body": "text", "content_type": "varchar",
    "errors": "json", "attempts": "integer", "received_at": "timestamptz",
    "processed_at": "timestamptz"}
_JSON_COLUMNS = frozenset(name for name, kind in EVENT_COLUMNS.items() if kind == "json")

#: the credentials a webhook was checked against, next to each row of
#: :data:`_RECORD_CHECKED_PG`: a row is written only if its source still has them
_CHECKED_COLUMNS: dict[str, str] = {
    "src_secret": "varchar", "src_previous_secret": "varchar",
    "src_previous_secret_expires_at": "timestamptz", "src_token_hash": "varchar"}
#: the source a checked row is written for: still enabled, and still the one it was
#: checked against (same account, kind, secrets and token)
_SAME_SOURCE = (
    " JOIN sources AS s ON s.id = r.source_id AND s.enabled"
    " AND s.account_id = r.account_id AND s.kind = r.channel AND s.secret = r.src_secret"
    " AND s.previous_secret IS NOT DISTINCT FROM r.src_previous_secret"
    " AND s.previous_secret_expires_at IS NOT DISTINCT FROM r.src_previous_secret_expires_at"
    " AND s.token_hash = r.src_token_hash")


def _insert_events(placeholder: str, *, checked: bool = False) -> str:
    """PostgreSQL: a batch of webhooks as events, all in one JSON parameter (one string
    to send, parsed by the server), so that the statement is the same text for any
    batch size; a JSON column's None is stored as JSON null, as SQLAlchemy's JSON type
    does; returns the ids of the rows it wrote. With ``checked``, each row carries
    :data:`_CHECKED_COLUMNS` and is written only for :data:`_SAME_SOURCE`: the check
    and the write in one statement, one round trip."""
    columns = {**EVENT_COLUMNS, **_CHECKED_COLUMNS} if checked else EVENT_COLUMNS
    return (
        f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) "  # noqa: S608 (names are ours)
        "SELECT " + ", ".join(f"coalesce(r.{n}, 'null'::json)" if n in _JSON_COLUMNS
                              else f"r.{n}" for n in EVENT_COLUMNS)
        + f" FROM json_to_recordset(CAST({placeholder} AS json)) AS r("
        + ", ".join(f"{n} {t}" for n, t in columns.items()) + ")"
        + (_SAME_SOURCE if checked else "")
        + " ON CONFLICT (dedupe_key) DO NOTHING RETURNING id")


#: for SQLAlchemy's ``text()`` and for psycopg's cursor
_FIND_SOURCES_TEXT = text(_FIND_SOURCES_PG.format(ids=":ids"))
_FIND_SOURCES_DRIVER = _FIND_SOURCES_PG.format(ids="%(ids)s")
_RECORD_PG_TEXT = text(_insert_events(":rows"))
_RECORD_CHECKED_PG = _insert_events("%(rows)s", checked=True)
#: SQLite: the same, sent by SQLAlchemy as a multi-row INSERT
_RECORD_SQLITE = (sqlite_insert(Event).on_conflict_do_nothing(index_elements=["dedupe_key"])
                  .returning(Event.id))


class InboxWrite(Protocol):
    """One batch's write to the web's inbox (:func:`transaction`)."""

    def find_sources(self, source_ids: Iterable[str]) -> dict[str, SourceRow]:
        """:func:`find_sources`, on this batch's connection."""

    def record_checked(self, checked: Sequence[tuple[SourceRow, dict[str, Any]]]
                       ) -> tuple[set[str], set[str]]:
        """Insert each row (as :func:`record_leads` does) whose source is still the
        :class:`SourceRow` it was checked against, and enabled.

        :returns: the ids of the rows written, and those of the rows whose source
            changed (the others were stored before, or twice in ``checked``).
        """


def _changed(current: dict[str, SourceRow], checked: Sequence[tuple[SourceRow, dict[str, Any]]]
             ) -> set[str]:
    """The ids of the rows whose source is not, or no longer, the one checked."""
    return {row["id"] for source, row in checked
            if not source.enabled or current.get(source.id) != source}


@contextmanager
def transaction(engine: Engine) -> Iterator[InboxWrite]:
    """The write of a batch of webhooks, committed by the time the block ends.

    On PostgreSQL its statements go straight to psycopg on a pooled connection
    (:func:`db.engine.driver_transaction`): for a batch, SQLAlchemy's execution
    layer cost more CPU than the statements did. There a batch is written by one
    statement (:meth:`_DriverWrite.record_checked`), in autocommit: committed by the
    time the server answers it, in one round trip instead of two (the statement
    and its ``COMMIT``; bench/RESULTS.md has what that gave). A read of sources
    that may follow is a statement of its own. Elsewhere it is a plain SQLAlchemy
    connection, committed at the end.
    """
    if engine.dialect.name == "postgresql":
        with driver_transaction(engine, autocommit=True) as driver:
            yield _DriverWrite(driver.cursor())
        return
    with engine.connect() as conn:
        yield _ConnectionWrite(conn)
        conn.commit()


@dataclass(frozen=True, slots=True)
class _ConnectionWrite:
    conn: Connection

    def find_sources(self, source_ids: Iterable[str]) -> dict[str, SourceRow]:
        return find_sources(self.conn, source_ids)

    def record_leads(self, rows: Sequence[dict[str, Any]]) -> set[str]:
        return record_leads(self.conn, rows)

    def record_checked(self, checked: Sequence[tuple[SourceRow, dict[str, Any]]]
                       ) -> tuple[set[str], set[str]]:
        changed = _changed(self.find_sources(source.id for source, _ in checked), checked)
        return self.record_leads([row for _, row in checked if row["id"] not in changed]), changed


@dataclass(frozen=True, slots=True)
class _DriverWrite:
    cursor: Any  # psycopg.Cursor

    def find_sources(self, source_ids: Iterable[str]) -> dict[str, SourceRow]:
        ids = sorted(set(source_ids))
        if not ids:
            return {}
        self.cursor.execute(_FIND_SOURCES_DRIVER, {"ids": ids})
        return {row[0]: SourceRow(*row) for row in self.cursor.fetchall()}

    def record_checked(self, checked: Sequence[tuple[SourceRow, dict[str, Any]]]
                       ) -> tuple[set[str], set[str]]:
        if not checked:
            return set(), set()
        rows = [{**row, "src_secret": source.secret,
                 "src_previous_secret": source.previous_secret,
                 "src_previous_secret_expires_at": source.previous_secret_expires_at,
                 "src_token_hash": source.token_hash} for source, row in checked]
        self.cursor.execute(_RECORD_CHECKED_PG, {"rows": _rows_document(
            rows, columns=(*EVENT_COLUMNS, *_CHECKED_COLUMNS))})
        written = {row[0] for row in self.cursor.fetchall()}
        rest = [(source, row) for source, row in checked if row["id"] not in written]
        if not rest:
            return written, set()
        # why some were not written: read their sources (a repeated webhook-id is the
        # usual reason; a source changed since its check the rare one)
        return written, _changed(self.find_sources(source.id for source, _ in rest), rest)


def find_sources(conn: Connection, source_ids: Iterable[str]) -> dict[str, SourceRow]:
    """The sources with these ids, disabled ones too (they answer 410); absent ids are left out."""
    ids = sorted(set(source_ids))
    if not ids:
        return {}
    statement = _FIND_SOURCES_TEXT if conn.dialect.name == "postgresql" else _FIND_SOURCES
    rows = conn.execute(statement, {"ids": ids})
    return {row[0]: SourceRow(*row) for row in rows}


def record_leads(conn: Connection, rows: Sequence[dict[str, Any]]) -> set[str]:
    """Insert webhooks as event rows (each a dict of :data:`EVENT_COLUMNS`), in the caller's
    transaction, skipping any whose ``dedupe_key`` is stored already (or earlier in ``rows``).

    :returns: the ids of the rows written.
    """
    if not rows:
        return set()
    if conn.dialect.name != "postgresql":
        return {row[0] for row in conn.execute(_RECORD_SQLITE, list(rows))}
    return {row[0] for row in conn.execute(_RECORD_PG_TEXT, {"rows": _rows_document(rows)})}


def _rows_document(rows: Sequence[dict[str, Any]],
                   columns: Iterable[str] = tuple(EVENT_COLUMNS)) -> str:
    """The rows as the JSON array :func:`_insert_events` reads, in key order, so that two
    batches holding the same webhook-ids never wait on each other in a cycle (each
    waiting for the other's uncommitted key)."""
    ordered = sorted(rows, key=lambda row: str(row["dedupe_key"]))
    names = tuple(columns)
    return json.dumps([{name: row[name] for name in names} for row in ordered], default=_iso)


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
