"""The fault drill's faults: the Procfile's processes, the faults on a timeline, and what
they cost in Redis (the messages a dead worker held, and the heartbeats of live ones)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import cast

import redis

from bench.drill_load import WAVE_S
from bench.servers import ScratchPostgres, ScratchRedis
from worker import procfile

#: seconds within which a dead worker's messages must be back on their queue
RECOVERY_S = 30.0
#: seconds PostgreSQL stays down
PG_OUTAGE_S = 10.0
#: seconds Redis stays down
REDIS_OUTAGE_S = 2.0
#: seconds a stopped line gets before it is killed
STOP_GRACE_S = 30.0
#: seconds after the start of a wave of sends that a fault strikes
STRIKE_AFTER_S = 0.5


class Line:
    """One Procfile line as its own process group, logging to a file."""

    def __init__(self, name: str, env: dict[str, str], logs: Path, index: int = 0) -> None:
        self.name, self.env = name, env
        self.label = f"{name}-{index}" if index else name
        self.log = logs / f"{self.label}.log"
        self.command = procfile.read()[name]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(f"exec {self.command}", shell=True,  # noqa: S602
                                         cwd=procfile.ROOT, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def children(self) -> list[int]:
        assert self.proc is not None
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = (entry / "stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                        found.append(int(entry.name))
        return sorted(found)

    def wait(self, timeout: float = STOP_GRACE_S) -> None:
        assert self.proc is not None
        self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.kill(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.proc.wait()


class Recorder:
    """Watches Redis: the heartbeats of worker processes, and what dead ones hold."""

    def __init__(self, url: str, namespace: str) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=2)
        self.ns = namespace
        self.last: dict[str, float] = {}
        self.gaps: dict[str, float] = defaultdict(float)
        self.workers: set[str] = set()
        self.paused = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()

    def ack_keys(self) -> dict[str, list[str]]:
        """Broker id -> its ack set keys."""
        out: dict[str, list[str]] = defaultdict(list)
        prefix = f"{self.ns}:__acks__."
        for key in self.client.scan_iter(match=f"{prefix}*", count=1000):
            name = key.decode()
            out[name[len(prefix):].split(".", 1)[0]].append(name)
        return out

    def _watch(self) -> None:
        tick = 0
        while not self.stopping.wait(0.25):
            if self.paused.is_set():
                self.last.clear()
                continue
            with contextlib.suppress(redis.RedisError):
                if tick % 8 == 0:
                    self.workers |= set(self.ack_keys())
                tick += 1
                for broker_id, score in self.heartbeats().items():
                    before = self.last.get(broker_id)
                    if before is not None and score > before:
                        self.gaps[broker_id] = max(self.gaps[broker_id], (score - before) / 1000)
                    self.last[broker_id] = score

    def heartbeats(self) -> dict[str, float]:
        """Broker id -> milliseconds of its last heartbeat."""
        beats = cast(list[tuple[bytes, float]], self.client.zrange(
            f"{self.ns}:__heartbeats__", 0, -1, withscores=True))
        return {raw.decode(): float(score) for raw, score in beats}

    def max_gap_s(self) -> float:
        return max((self.gaps[w] for w in self.workers if w in self.gaps), default=0.0)

    def held_by_dead(self, since_ms: float) -> dict[str, set[str]]:
        """Ack set key -> Redis message ids, of broker ids silent since ``since_ms``."""
        beats = self.heartbeats()
        held: dict[str, set[str]] = {}
        for broker_id, keys in self.ack_keys().items():
            if beats.get(broker_id, 0) <= since_ms:
                for key in keys:
                    members = cast(set[bytes], self.client.smembers(key))
                    held[key] = {m.decode() for m in members}
        return held

    def _messages_key(self, ack_key: str) -> str:
        """``{ns}:__acks__.{id}.{queue}`` -> ``{ns}:{queue}.msgs`` (a queue may end in .DQ)."""
        queue = ack_key[len(f"{self.ns}:__acks__."):].split(".", 1)[1]
        return f"{self.ns}:{queue}.msgs"

    def recovery(self, held: dict[str, set[str]], killed_at: float) -> tuple[float, float]:
        """Seconds from ``killed_at`` until the held messages were requeued, then all acked."""
        requeued = done = float("inf")
        deadline = killed_at + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if requeued == float("inf") and not any(self.client.exists(k) for k in held):
                    requeued = time.monotonic() - killed_at
                if requeued != float("inf") and not any(
                        self.client.hexists(self._messages_key(key), m)
                        for key, ids in held.items() for m in ids):
                    done = time.monotonic() - killed_at
                    return requeued, done
            time.sleep(0.1)
        return requeued, done


class Faults:
    """The faults, at fractions of the load's duration; ``log`` says what happened."""

    def __init__(self, workers: list[Line], rds: ScratchRedis, pg: ScratchPostgres,
                 recorder: Recorder, logs: Path) -> None:
        self.workers, self.rds, self.pg, self.recorder = workers, rds, pg, recorder
        self.logs = logs
        #: one entry per fault: what was done, then what followed
        self.log: list[list[str]] = []
        self.problems: list[str] = []
        self.redis_back_at = 0.0
        self.started = 0.0
        self.watchers: list[threading.Thread] = []

    def _say(self, text: str, at: float | None = None) -> list[str]:
        entry = [f"+{(at or time.monotonic()) - self.started:5.1f}s {text}"]
        self.log.append(entry)
        return entry

    def run(self, started: float, load_s: float) -> None:
        self.started = started
        w = self.workers
        timeline: list[tuple[float, Callable[[], None]]] = [
            (0.10, lambda: self.kill_line(w[0])),
            (0.20, lambda: self.kill_one_process(w[1 % len(w)])),
            (0.38, self.restart_redis),
            (0.48, lambda: self.kill_line(w[0])),
            (0.66, self.postgres_outage),
            (0.86, lambda: self.kill_line(w[1 % len(w)])),
        ]
        for at, fault in timeline:
            wave = round(at * load_s / WAVE_S) * WAVE_S  # just after a wave went out
            time.sleep(max(0.0, self.started + wave + STRIKE_AFTER_S - time.monotonic()))
            fault()
        for watcher in self.watchers:
            watcher.join()

    def _watch(self, entry: list[str], what: str, killed_at: float, killed_ms: float) -> None:
        def watch() -> None:
            time.sleep(1.5)
            held = self.recorder.held_by_dead(killed_ms)
            count = sum(len(ids) for ids in held.values())
            requeued, done = self.recorder.recovery(held, killed_at)
            entry.append(f"{count} messages held by the dead processes; back on their queue "
                         f"{requeued:.1f}s after the kill, all processed after {done:.1f}s")
            if requeued > RECOVERY_S:
                self.problems.append(f"{what}: messages back after {requeued:.1f}s")

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        self.watchers.append(thread)

    def kill_line(self, line: Line) -> None:
        n = len(line.children()) + 1
        killed_at, killed_ms = time.monotonic(), time.time() * 1000
        line.kill(signal.SIGKILL)
        line.wait()
        line.start()
        entry = self._say(f"SIGKILL {line.label}, all {n} processes; started again", killed_at)
        self._watch(entry, line.label, killed_at, killed_ms)

    def kill_one_process(self, line: Line) -> None:
        [victim, *_] = line.children()
        killed_at, killed_ms = time.monotonic(), time.time() * 1000
        os.kill(victim, signal.SIGKILL)
        line.wait()  # dramatiq stops the other processes gracefully, then exits
        stopped = time.monotonic() - killed_at
        line.start()
        entry = self._say(f"SIGKILL one process of {line.label}; the others stopped "
                          f"gracefully in {stopped:.1f}s; started again", killed_at)
        self._watch(entry, f"{line.label} (one process)", killed_at, killed_ms)

    def restart_redis(self) -> None:
        self.recorder.paused.set()
        down = time.monotonic()
        self.rds.stop()
        time.sleep(REDIS_OUTAGE_S)
        self.rds.start()
        self.redis_back_at = time.monotonic()
        self.recorder.paused.clear()
        self._say(f"Redis killed and started again empty (down {self.redis_back_at - down:.1f}s)",
                  down)

    def postgres_outage(self) -> None:
        down = time.monotonic()
        self.pg.stop("fast")
        time.sleep(PG_OUTAGE_S)
        self.pg.start()
        self._say(f"PostgreSQL stopped and started again (down {time.monotonic() - down:.1f}s)",
                  down)
