"""Manual creations in one process, by 1 to 16 threads: what the group commit saves.

    python -m bench.group_commit [--messages 4000] [--threads 1,2,4,8,16] [--accounts 500]

No broker consumer and no worker processes: each thread calls the handler the
``create_manual_profile`` actor calls (parse, create with whatever the other
threads have in hand, publish the outcomes, log), on a scratch database and a
broker namespace of the run's own (``bench/_harness.py``). For each thread count
it prints the CPU this process spent per message, the messages per batch and
the rate. The threads of a batch share one transaction, one statement and one
round trip to Redis, so the CPU per message falls as batches grow; dramatiq's own
cost (see ``bench/worker.py``'s no-op actor) comes on top in the real worker.
Then it checks every outcome and runs ``ledger verify``. With ``--accounts`` in
the tens of thousands it shows whether a batch's cost grows with the number of
accounts (it should not: the balances are found by key).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import threading
import time
from typing import Any

from bench._harness import Bench, BenchFailed, bench
from bench.worker import payload, setup_spread

ACCOUNTS = 500


def run_threads(b: Bench, ids: list[str], *, messages: int, threads: int,
                tag: str) -> tuple[float, float, float, list[Any]]:
    """(CPU seconds per message, messages per batch, messages per second, outcomes)."""
    from worker import handlers

    work = iter([(payload(ids[i % len(ids)], f"{tag}-{i}"), f"{tag}-m{i}")
                 for i in range(messages)])
    lock = threading.Lock()
    outcomes: list[Any] = []
    group = handlers._manual_batches()
    batches, items = group.batches, group.items

    def loop() -> None:
        while True:
            with lock:
                nxt = next(work, None)
            if nxt is None:
                return
            outcome = handlers.create_manual_profile(nxt[0], message_id=nxt[1])
            with lock:
                outcomes.append(outcome)

    pool = [threading.Thread(target=loop) for _ in range(threads)]
    cpu, wall = time.process_time(), time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    per_batch = (group.items - items) / max(1, group.batches - batches)
    return cpu / messages, per_batch, messages / wall, outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--threads", default="1,2,4,8,16")
    parser.add_argument("--accounts", type=int, default=ACCOUNTS)
    args = parser.parse_args(argv)
    counts = [int(t) for t in args.threads.split(",")]
    with bench("group_commit") as b:
        ids = setup_spread(b, accounts=args.accounts,
                           allowance=args.messages * len(counts) // args.accounts + 10)
        os.environ.update(b.env)
        from worker import broker, logs, runtime

        runtime.reset()
        logs.configure(fmt="json", level="INFO")  # the outcome lines, as the worker writes them
        broker.setup()
        stderr, sys.stderr = sys.stderr, open(os.devnull, "w")  # noqa: SIM115 (restored below)
        print(f"group commit bench: {args.messages} creations over {args.accounts} accounts in "
              "one process, per thread count", flush=True)
        try:
            run_threads(b, ids, messages=50, threads=1, tag="warm")
            for threads, n in zip(counts, itertools.count()):
                cpu, per_batch, rate, outcomes = run_threads(
                    b, ids, messages=args.messages, threads=threads, tag=f"t{n}")
                if any(o.status.value != "created" for o in outcomes):
                    raise BenchFailed(f"{threads} threads: not every creation was created")
                print(f"{threads:>2} threads: cpu per message {cpu * 1e3:.3f} ms, "
                      f"{per_batch:.2f} messages per batch, {rate:.0f} msg/s", flush=True)
            print(f"ledger verify: {b.cli('ledger', 'verify').strip()}", flush=True)
        except BenchFailed as exc:
            print(f"FAILED: {exc}", flush=True)
            return 1
        finally:
            sys.stderr.close()
            sys.stderr = stderr
            broker.setup().client.close()
            runtime.reset()
    print("checks: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
