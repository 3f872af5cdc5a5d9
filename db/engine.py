"""Engines and sessions.

``session_scope`` is the one place that commits. On SQLite every transaction
starts with ``BEGIN IMMEDIATE`` so that two writers never both read a balance
and then race to write it; WAL and a busy timeout let them queue instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

#: milliseconds a SQLite writer waits for the lock before giving up
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: seconds a pooled PostgreSQL connection may sit unused and still be trusted without a ping
PING_AFTER_IDLE_S = 2.0


def normalise_url(url: str) -> str:
    """Take a database URL as hosting platforms give it and name our driver.

    ``postgres://``, ``postgresql://`` and ``postgresql+<driver>://`` all become
    ``postgresql+psycopg://``; SQLite URLs are left as they are.

    :raises ValueError: for a scheme that is neither PostgreSQL nor SQLite.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"DATABASE_URL is not a URL: {url!r}")
    base = scheme.split("+", 1)[0].lower()
    if base in ("postgres", "postgresql"):
        return f"postgresql+psycopg://{rest}"
    if base == "sqlite":
        return url
    raise ValueError(f"unsupported database scheme {scheme!r}; use postgresql:// or sqlite://")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(url: str, *, pool_size: int = 10, echo: bool = False) -> Engine:
    """Create an engine for ``url`` (normalised first), tuned for its dialect."""
    url = normalise_url(url)
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"echo": echo, "hide_parameters": True}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                                  "check_same_thread": False}
        engine = create_engine(url, **kwargs)
        _install_sqlite_hooks(engine)
        return engine
    kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800)
    engine = create_engine(url, **kwargs)
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Check a pooled connection before use only when it has sat unused for a while.

    ``pool_pre_ping`` would cost a round trip on every checkout, one in four of
    a manual creation's. A connection in steady use is not pinged: if the server
    went away in between, its first statement fails, the pool drops every
    connection made before (SQLAlchemy's sessions and connections; on the hot
    paths of :func:`driver_transaction`, only the connection that failed, so the
    others in steady use fail once each), and the message is retried like any
    transient error, or the webhook answered 503.
    """
    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_S:
            return  # just connected, or in use a moment ago
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # any failure: the pool reconnects and tries again
            raise DisconnectionError("pooled connection did not answer a ping") from exc


def _install_sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when a transaction begins.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=True)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A transaction: commit when the block ends, roll back if it raises."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def driver_transaction(engine: Engine, *, autocommit: bool = False) -> Iterator[Any]:
    """A transaction on a pooled connection's own driver connection (psycopg on
    PostgreSQL), for the hot paths whose statements are cheaper than SQLAlchemy's
    execution layer around them: committed when the block ends, rolled back if it
    raises (a block may also roll back itself). A connection that saw an error is
    dropped from the pool, whatever state it was left in, and the driver's errors
    come out as SQLAlchemy's (``OperationalError`` for a server that went away),
    which the callers already handle.

    :param autocommit: each statement of the block is a transaction of its own,
        committed by the server before it answers: one round trip where a
        statement and its ``COMMIT`` take two. Only for a block whose writes are
        one statement (a statement is atomic; a block of several would not be),
        or several sent in one psycopg pipeline, which the server runs as one
        implicit transaction up to the pipeline's sync.
    """
    dbapi_error = engine.dialect.loaded_dbapi.Error
    try:
        raw = engine.raw_connection()  # the pool does not wrap a failure to connect
    except dbapi_error as exc:
        raise DBAPIError.instance(None, None, exc, dbapi_error, hide_parameters=True,
                                  dialect=engine.dialect) from exc
    try:
        driver = raw.driver_connection
        assert driver is not None  # a checked-out connection
        if autocommit:
            driver.autocommit = True
            yield driver
            driver.autocommit = False  # as the pool lends it to everyone else
        else:
            yield driver
            driver.commit()  # nothing to send when the block rolled back
    except BaseException as exc:
        raw.invalidate()  # whatever its state (autocommit too): never lent again
        if isinstance(exc, dbapi_error):
            raise DBAPIError.instance(None, None, exc, dbapi_error, hide_parameters=True,
                                      connection_invalidated=True,
                                      dialect=engine.dialect) from exc
        raise
    finally:
        raw.close()
