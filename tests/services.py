"""Real PostgreSQL and Redis for the tests: found, started if down, or skipped with a reason.

Each run gets its own PostgreSQL databases (a migrated template, copied per
test) and its own dramatiq namespace on Redis; nothing outside them is touched.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
import uuid

import psycopg
import redis

PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_TEST_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN_ID = uuid.uuid4().hex[:8]


def _pg_answers() -> bool:
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def _redis_answers() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_TEST_URL, socket_timeout=2).ping())
    except redis.RedisError:
        return False


def ensure_postgres() -> str | None:
    """None when PostgreSQL answers (started if it was down), else why not."""
    if _pg_answers():
        return None
    if shutil.which("pg_ctlcluster") and glob.glob("/etc/postgresql/*"):
        version = sorted(os.listdir("/etc/postgresql"))[-1]
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
                       capture_output=True, check=False)
        for _ in range(50):
            if _pg_answers():
                return None
            time.sleep(0.2)
    return f"PostgreSQL does not answer at {PG_ADMIN_URL} and could not be started"


def ensure_redis() -> str | None:
    """None when Redis answers (started if it was down), else why not."""
    if _redis_answers():
        return None
    if shutil.which("redis-server"):
        os.makedirs("/var/lib/redis", exist_ok=True)
        os.makedirs("/var/log/redis", exist_ok=True)
        subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1",
                        "--port", "6379", "--save", "", "--appendonly", "no",
                        "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log"],
                       capture_output=True, check=False)
        for _ in range(50):
            if _redis_answers():
                return None
            time.sleep(0.1)
    return f"Redis does not answer at {REDIS_TEST_URL} and could not be started"


def pg_url(database: str) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{database}"


def admin(sql: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def drop_database(name: str) -> None:
    admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def cleanup_namespace(namespace: str) -> None:
    """Delete this run's broker keys; other users of the server keep theirs."""
    try:
        client = redis.Redis.from_url(REDIS_TEST_URL)
        keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i:i + 500])
    except redis.RedisError:
        pass
