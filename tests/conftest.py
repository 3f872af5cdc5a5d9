"""Fixtures: a fresh migrated database per test, on SQLite and on PostgreSQL.

``db_url`` is parametrised over both backends; tests about locking and
concurrency ask for ``pg_url`` alone. Each test gets a database of its own
(copied from a template migrated once per run), so tests may commit freely.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_engine, make_session_factory
from db.migrate import upgrade
from tests import services
from worker import runtime

# The Procfile lines and the CLI run as processes: find this environment's
# uvicorn, dramatiq and casecredits even when the venv is not activated (CI).
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

_counter = itertools.count()
_pg_skip: str | None = None
_redis_skip: str | None = None
PG_TEMPLATE = f"cc_tmpl_{services.RUN_ID}"
NAMESPACE = f"cctest-{services.RUN_ID}"


def pytest_sessionstart(session: pytest.Session) -> None:
    global _pg_skip, _redis_skip
    _pg_skip = services.ensure_postgres()
    _redis_skip = services.ensure_redis()
    for reason in (_pg_skip, _redis_skip):
        if reason:
            print(f"\nSKIPPING tests that need it: {reason}")
    if _pg_skip is None:
        services.drop_database(PG_TEMPLATE)
        services.admin(f'CREATE DATABASE "{PG_TEMPLATE}"')
        upgrade(services.pg_url(PG_TEMPLATE))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _pg_skip is None:
        import psycopg

        from tests.services import PG_ADMIN_URL  # noqa: F401

        with psycopg.connect(services.PG_ADMIN_URL, autocommit=True) as conn:
            names = [r[0] for r in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s",
                (f"cc_%_{services.RUN_ID}%",))]
        for name in names:
            services.drop_database(name)
    if _redis_skip is None:
        services.cleanup_namespace(NAMESPACE)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tmpl") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "casecredits.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh migrated PostgreSQL database, dropped after the test."""
    if _pg_skip:
        pytest.skip(_pg_skip)
    name = f"cc_t{next(_counter)}_{services.RUN_ID}_{os.getpid()}"
    services.admin(f'CREATE DATABASE "{name}" TEMPLATE "{PG_TEMPLATE}"')
    yield services.pg_url(name)
    services.drop_database(name)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test that asks for it runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def factory(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def redis_url() -> str:
    if _redis_skip:
        pytest.skip(_redis_skip)
    return services.REDIS_TEST_URL


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    """A broker namespace of this test's own."""
    return f"{NAMESPACE}-{next(_counter)}"


@pytest.fixture
def service_env(monkeypatch: pytest.MonkeyPatch, db_url: str, redis_url: str,
                namespace: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for the process under test and any process it starts."""
    env = {"DATABASE_URL": db_url, "REDIS_URL": redis_url, "BROKER_NAMESPACE": namespace,
           "VAR_DIR": str(tmp_path / "var"), "LOG_FORMAT": "json",
           "INTERNAL_API_TOKEN": "test-internal-token"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runtime.reset()
    yield env
    runtime.reset()


def at(text: str) -> datetime:
    """An aware instant from ISO text; naive text is taken as UTC."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
