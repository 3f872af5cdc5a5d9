"""Benchmark: how soon a dead worker's messages come back from Redis, and at what cost.

    python -m bench.heartbeat [--trials 3] [--cap 90] [--calls 5000]

A worker that is SIGKILLed leaves the messages it had fetched (in flight and
prefetched) in its ack set in Redis. They go back to their queue only when some
broker call on that queue, ``maintenance_chance`` times in a million, runs the
maintenance and finds the worker's heartbeat older than ``heartbeat_timeout``.

Part 1, recovery: for each setting, a "victim" broker fetches 20 messages and
goes silent (what SIGKILL does to a worker), then one real dramatiq ``Worker``
(one process, the worst case: more processes poll more often) consumes the
queue. Prints the seconds until every message ran again, per trial, capped.

Part 2, cost: server-side microseconds per broker call (Redis ``INFO
commandstats``) and client-side calls per second, with maintenance never and on
every call, on an idle queue (what idle consumers do once a second) and for
enqueue/fetch/ack cycles; then the worst case, a dead worker whose ack set
stays (maintenance runs ``KEYS`` for it on every call) beside 100,000 keys.

Everything runs against a scratch redis-server on a spare port.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message
from dramatiq.worker import Worker

from bench.servers import ScratchRedis

#: (heartbeat_timeout ms, maintenance_chance per million, label)
SETTINGS = [
    (60_000, 1_000, "dramatiq defaults"),
    (15_000, 100, "before this change"),
    (15_000, 100_000, "15 s, 10 %"),
    (10_000, 1_000_000, "10 s, every call"),
]
HELD = 20
#: seconds between two polls of an idle queue by one consumer, at most (dramatiq's
#: worker_timeout); the maintenance can only run on a queue when it is polled
POLL_S = 1.0


def _message(queue: str, i: int) -> Message[Any]:
    return Message(queue_name=queue, actor_name="noop", args=(i,), kwargs={}, options={})


def recovery_trial(url: str, namespace: str, heartbeat: int, chance: int, cap_s: float) -> float:
    """Seconds from the victim's last call until all its messages ran again (``cap_s`` at most)."""
    victim = RedisBroker(url=url, namespace=namespace, heartbeat_timeout=heartbeat,
                         maintenance_chance=chance, middleware=[])
    victim.declare_queue("q")
    for i in range(HELD):
        victim.enqueue(_message("q", i))
    fetched = victim.do_fetch("q", HELD)
    assert len(fetched) == HELD
    killed_at = time.monotonic()
    done: set[int] = set()
    finished = threading.Event()

    live = RedisBroker(url=url, namespace=namespace, heartbeat_timeout=heartbeat,
                       maintenance_chance=chance, middleware=[])

    def noop(i: int) -> None:
        done.add(i)
        if len(done) == HELD:
            finished.set()

    dramatiq.actor(broker=live, actor_name="noop", queue_name="q")(noop)
    worker = Worker(live, worker_threads=2, worker_timeout=1000)
    worker.start()
    finished.wait(cap_s)
    took = time.monotonic() - killed_at
    worker.stop(timeout=5000)
    live.client.flushdb()
    return took if finished.is_set() else float("inf")


def _evalsha_usec(client: redis.Redis) -> tuple[int, float]:
    stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    entry = stats.get("cmdstat_evalsha", {"calls": 0, "usec": 0})
    return int(entry["calls"]), float(entry["usec"])


def cost(url: str, chance: int, calls: int, *, cycle: bool) -> tuple[float, float]:
    """(server µs per call, client calls per second) for idle fetches or enqueue/fetch/ack."""
    client = redis.Redis.from_url(url)
    broker = RedisBroker(url=url, namespace="cost", maintenance_chance=chance, middleware=[])
    broker.declare_queue("q")
    for n in range(20):  # live workers in the heartbeat set, as in production
        client.zadd("cost:__heartbeats__", {f"live-{n}": int(time.time() * 1000) + 10**9})
    client.config_resetstat()
    started = time.perf_counter()
    ops = 0
    for i in range(calls):
        if cycle:
            broker.enqueue(_message("q", i))
            [data] = broker.do_fetch("q", 1)
            broker.do_ack("q", Message.decode(data).options["redis_message_id"])
            ops += 3
        else:
            broker.do_fetch("q", 1)
            ops += 1
    elapsed = time.perf_counter() - started
    n, usec = _evalsha_usec(client)
    client.flushdb()
    return usec / max(n, 1), ops / elapsed


def worst_case(url: str, calls: int) -> float:
    """Server µs per idle fetch with one lingering dead worker beside 100,000 keys."""
    client = redis.Redis.from_url(url)
    pipe = client.pipeline(transaction=False)
    for i in range(100_000):
        pipe.set(f"other:{i}", "x")
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()
    client.zadd("cost:__heartbeats__", {"dead": 1})
    client.sadd("cost:__acks__.dead.elsewhere", "m")  # an ack set no consumer polls
    broker = RedisBroker(url=url, namespace="cost", maintenance_chance=1_000_000,
                         middleware=[])
    client.config_resetstat()
    for _ in range(calls):
        broker.do_fetch("q", 1)
    n, usec = _evalsha_usec(client)
    client.flushdb()
    return usec / max(n, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--cap", type=float, default=90.0, help="seconds per recovery trial")
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-recovery", action="store_true")
    args = parser.parse_args()
    server = ScratchRedis(Path(tempfile.mkdtemp(prefix="cc_hb_")))
    server.start()
    try:
        print(f"## recovery: {HELD} held messages, one live worker process, cap {args.cap:.0f} s")
        for heartbeat, chance, label in [] if args.skip_recovery else SETTINGS:
            trials = [recovery_trial(server.url, f"hb{heartbeat}-{chance}-{t}", heartbeat,
                                     chance, args.cap) for t in range(args.trials)]
            shown = ", ".join("> cap" if t == float("inf") else f"{t:.1f}" for t in trials)
            finite = [t for t in trials if t != float("inf")]
            median = f"{statistics.median(finite):.1f} s" if len(finite) == len(trials) else "-"
            expected = heartbeat / 1000 + 1_000_000 / chance * POLL_S / 2
            print(f"heartbeat {heartbeat / 1000:>4.0f} s, chance {chance:>9,}/1e6 ({label}): "
                  f"{shown} s; median {median}; expected about {expected:,.0f} s")
        print(f"\n## cost per broker call: median of {args.rounds} interleaved rounds of "
              f"{args.calls} (server µs per call, client calls/s)")
        for cycle in (False, True):
            what = "enqueue/fetch/ack" if cycle else "idle fetch"
            runs: dict[int, list[tuple[float, float]]] = {0: [], 1_000_000: []}
            for _ in range(args.rounds):
                for chance in runs:
                    runs[chance].append(cost(server.url, chance, args.calls, cycle=cycle))
            for chance, results in runs.items():
                usec = statistics.median(r[0] for r in results)
                rate = statistics.median(r[1] for r in results)
                print(f"{what:<18} maintenance {'every call' if chance else 'never':<10}: "
                      f"{usec:6.1f} µs, {rate:8,.0f} calls/s")
        usec = worst_case(server.url, min(args.calls, 500))
        print(f"worst case: a lingering dead worker beside 100,000 keys: {usec:,.0f} µs per call")
    finally:
        server.destroy()


if __name__ == "__main__":
    main()
