"""Per-process resources: settings, the database engine and the clock.

Created on first use, so that importing a module opens nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_engine, make_session_factory
from worker.settings import get_settings

#: the clock every domain call is given; tests replace it
clock: Callable[[], datetime] = lambda: datetime.now(UTC)  # noqa: E731


def now() -> datetime:
    return clock()


@lru_cache(maxsize=1)
def engine() -> Engine:
    settings = get_settings()
    return make_engine(settings.effective_database_url, pool_size=settings.db_pool_size)


@lru_cache(maxsize=1)
def sessions() -> sessionmaker[Session]:
    return make_session_factory(engine())


def reset() -> None:
    """Forget the engine and settings (tests, and after a fork)."""
    if engine.cache_info().currsize:
        engine().dispose()
    engine.cache_clear()
    sessions.cache_clear()
    get_settings.cache_clear()
