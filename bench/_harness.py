"""What every benchmark starts: a scratch database, a broker namespace, the Procfile's processes.

The database is ``cc_bench_<name>_<hex>`` on the PostgreSQL server at
``BENCH_PG_ADMIN_URL`` (default: ``TEST_PG_ADMIN_URL`` or
``postgresql://postgres@127.0.0.1:5432/postgres``), migrated by the Procfile's
``release`` line and dropped at the end, whatever happens. The broker is the
Redis server at ``BENCH_REDIS_URL`` (default: ``TEST_REDIS_URL`` or
``redis://127.0.0.1:6379/0``) under a namespace of the run's own, whose keys
alone are deleted at the end. When PostgreSQL does not answer it is started as
CI starts it; when Redis does not answer a ``redis-server`` of the run's own is
started on a free port and stopped at the end.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message
from psycopg import sql
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_engine, make_session_factory
from worker import procfile

ROOT = procfile.ROOT
ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", os.environ.get(
    "TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
REDIS_URL = os.environ.get("BENCH_REDIS_URL", os.environ.get(
    "TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
#: the bearer token the web process is started with
INTERNAL_TOKEN = "bench-internal-token"  # noqa: S105 (a scratch run's)
#: seconds a process gets to stop on SIGTERM before it is killed
STOP_GRACE_S = 30.0
T = TypeVar("T")


class BenchFailed(RuntimeError):
    """A benchmark's correctness check did not hold, or a process it needs did not start."""


def _pg_answers() -> bool:
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def ensure_postgres() -> None:
    """Make sure PostgreSQL answers, starting the machine's cluster if it is down.

    :raises BenchFailed: when it cannot be reached or started.
    """
    if _pg_answers():
        return
    if shutil.which("pg_ctlcluster") and glob.glob("/etc/postgresql/*"):
        version = sorted(os.listdir("/etc/postgresql"))[-1]
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
                       capture_output=True, check=False)
        for _ in range(100):
            if _pg_answers():
                return
            time.sleep(0.2)
    raise BenchFailed(f"PostgreSQL does not answer at {ADMIN_URL} and could not be started")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """The URL of a Redis that answers: the machine's, or one started for this run."""
    try:
        if redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping():
            yield REDIS_URL
            return
    except redis.RedisError:
        pass
    if not shutil.which("redis-server"):
        raise BenchFailed(f"Redis does not answer at {REDIS_URL} and redis-server is missing")
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port),
                             "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_for(lambda: _redis_ping(url), timeout=10, what="own redis-server")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _redis_ping(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def wait_for(check: Callable[[], T], *, timeout: float, every: float = 0.1,
             what: str = "condition") -> T:
    """Poll ``check`` until it returns something true.

    :raises BenchFailed: after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchFailed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


@dataclass
class Bench:
    """One benchmark run's database, broker namespace and working directory."""

    name: str
    database_url: str
    redis_url: str
    namespace: str
    workdir: Path
    engine: Engine
    sessions: sessionmaker[Session]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """The environment every process of the run is started with."""
        return {**os.environ, "DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url,
                "BROKER_NAMESPACE": self.namespace, "VAR_DIR": str(self.workdir / "var"),
                "LOG_FORMAT": "json", "INTERNAL_API_TOKEN": INTERNAL_TOKEN,
                "ENVIRONMENT": "development", "PYTHONPATH": str(ROOT)}

    def cli(self, *args: str) -> str:
        """Run ``casecredits ARGS`` as an operator would; its stdout.

        :raises BenchFailed: when it exits non-zero.
        """
        done = subprocess.run(["casecredits", *args], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise BenchFailed(f"casecredits {' '.join(args)} exited {done.returncode}: "
                              f"{done.stdout}{done.stderr}".strip())
        return done.stdout

    def procfile_line(self, name: str) -> str:
        return procfile.read()[name]

    @contextmanager
    def process(self, name: str, *, command: str | None = None,
                extra_env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
        """Start the Procfile's ``name`` line (or ``command``) in its own process group."""
        command = command or self.procfile_line(name)
        log_path = self.workdir / f"{name}.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(f"exec {command}", shell=True,  # noqa: S602 (Procfile)
                                    cwd=ROOT, env={**self.env, **(extra_env or {})},
                                    stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.processes.append(proc)
        try:
            yield proc
        finally:
            stop(proc)
            self.processes.remove(proc)

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.workdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) \
            if path.exists() else ""

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def producer(self) -> RedisBroker:
        """A broker with no middleware, to send messages as the main application does."""
        return RedisBroker(url=self.redis_url, namespace=self.namespace, middleware=[])

    def pending(self, client: redis.Redis, queue: str) -> int:
        """Messages of ``queue`` not yet acknowledged (queued, in flight or delayed)."""
        base = f"{self.namespace}:{queue}"
        pipe = client.pipeline(transaction=False)
        pipe.hlen(f"{base}.msgs")
        pipe.hlen(f"{base}.DQ.msgs")
        return int(sum(pipe.execute()))

    def published(self, queue: str) -> list[bytes]:
        """The bodies of every message waiting on ``queue`` (nobody consumes it here)."""
        return list(self.redis().hvals(f"{self.namespace}:{queue}.msgs"))


def stop(proc: subprocess.Popen[bytes], timeout: float = STOP_GRACE_S) -> None:
    """SIGTERM the leader and wait for its whole group; SIGKILL what is left after ``timeout``.

    Only the leader: dramatiq's main process forwards the signal to its workers,
    and a worker that hears SIGTERM twice stops hard instead of finishing.
    """
    group = proc.pid
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _group_alive(group):
        proc.poll()  # reap the leader, or the group never looks empty
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
            deadline = time.monotonic() + timeout
        time.sleep(0.05)
    proc.wait()


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU seconds used so far: a process group's, PostgreSQL's, Redis's, and the machine's."""

    group: float
    postgres: float
    redis: float
    machine: float

    def __sub__(self, other: CpuSample) -> CpuSample:
        return CpuSample(self.group - other.group, self.postgres - other.postgres,
                         self.redis - other.redis, self.machine - other.machine)


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_sample(group: int) -> CpuSample:
    """Read /proc: CPU of process group ``group``, of every postgres and redis-server
    process (other users of those servers included, and the backends that exited,
    through the postmaster's count of its reaped children), and busy time of all cores."""
    own = pg = rd = 0.0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        # with the children it has reaped: the postmaster's exited backends
        used = sum(int(v) for v in fields[11:15]) / _TICK
        if int(fields[2]) == group:
            own += used
        elif name.startswith("postgres"):
            pg += used
        elif name.startswith("redis-server"):
            rd += used
    with open("/proc/stat") as f:
        cpu = [int(v) for v in f.readline().split()[1:]]
    busy = (sum(cpu) - cpu[3] - cpu[4]) / _TICK  # all but idle and iowait
    return CpuSample(own, pg, rd, busy)


def send_all(producer: RedisBroker, messages: list[Message[Any]], *, threads: int = 4) -> None:
    """Enqueue ``messages`` from a few threads (one Redis round trip each)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(producer.enqueue, messages, chunksize=256))


def message(queue: str, actor: str, payload: Any) -> Message[Any]:
    return Message(queue_name=queue, actor_name=actor, args=(payload,), kwargs={}, options={})


def _admin(statement: sql.Composable) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(statement)


def _delete_namespace(url: str, namespace: str) -> None:
    with contextlib.suppress(redis.RedisError):
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i:i + 500])
        client.close()


@contextmanager
def bench(name: str, *, keep: bool = False) -> Iterator[Bench]:
    """A migrated scratch database and a broker namespace, removed at the end.

    :param keep: keep the working directory (process logs) for a look afterwards.
    """
    ensure_postgres()
    run = uuid.uuid4().hex[:8]
    database = f"cc_bench_{name}_{run}"
    workdir = Path(tempfile.mkdtemp(prefix=f"cc_bench_{name}_"))
    base = ADMIN_URL.rsplit("/", 1)[0]
    engine: Engine | None = None
    with redis_server(workdir) as redis_url:
        _admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        namespace = f"ccbench-{name}-{run}"
        try:
            engine = make_engine(f"{base}/{database}", pool_size=4)
            b = Bench(name=name, database_url=f"{base}/{database}", redis_url=redis_url,
                      namespace=namespace, workdir=workdir, engine=engine,
                      sessions=make_session_factory(engine))
            release = subprocess.run(b.procfile_line("release"), shell=True,  # noqa: S602
                                     cwd=ROOT, env=b.env, capture_output=True, text=True,
                                     check=False)
            if release.returncode != 0:
                raise BenchFailed(f"release failed: {release.stdout}{release.stderr}")
            yield b
        finally:
            if engine is not None:
                engine.dispose()
            _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                   .format(sql.Identifier(database)))
            _delete_namespace(redis_url, namespace)
            if not keep:
                shutil.rmtree(workdir, ignore_errors=True)
