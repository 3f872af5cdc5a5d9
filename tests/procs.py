"""Run the Procfile's processes and talk to them as the main application would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

from worker import procfile

ROOT = procfile.ROOT
T = TypeVar("T")


@contextmanager
def running(name: str, env: dict[str, str], log_path: Path,
            extra_env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Start the Procfile's ``name`` line in its own process group; stop it after."""
    command = procfile.read()[name]
    full_env = {**os.environ, **env, **(extra_env or {})}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(f"exec {command}", shell=True,  # noqa: S602 (a Procfile line)
                                cwd=ROOT, env=full_env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Signal the leader and wait until every process in its group is gone.

    Only the leader: dramatiq's main process forwards the signal to its workers,
    and a worker that hears SIGTERM twice stops hard instead of finishing.
    """
    deadline = time.monotonic() + timeout
    with suppress(ProcessLookupError):
        os.kill(proc.pid, sig)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    proc.wait()


def wait_for(check: Callable[[], T], *, timeout: float = 60, every: float = 0.2,
             what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {value!r}")
        time.sleep(every)


class MainApp:
    """Sends messages and reads outcomes the way the main application does."""

    def __init__(self, redis_url: str, namespace: str) -> None:
        self.namespace = namespace
        self.broker = RedisBroker(url=redis_url, namespace=namespace, middleware=[])
        self.redis = redis.Redis.from_url(redis_url)

    def send(self, queue: str, actor: str, payload: Any) -> Message[Any]:
        return self.broker.enqueue(Message(queue_name=queue, actor_name=actor, args=(payload,),
                                           kwargs={}, options={}))

    def outcomes(self) -> list[dict[str, Any]]:
        """Every ``profile_outcome`` message published so far."""
        raw = self.redis.hvals(f"{self.namespace}:profile_outcomes.msgs")
        return [json.loads(m)["args"][0] for m in raw]

    def dead_letters(self, queue: str) -> list[dict[str, Any]]:
        raw = self.redis.hvals(f"{self.namespace}:{queue}.XQ.msgs")
        return [json.loads(m) for m in raw]

    def close(self) -> None:
        self.broker.close()


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``casecredits ARGS`` as an operator would."""
    return subprocess.run(["casecredits", *args], env={**os.environ, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
