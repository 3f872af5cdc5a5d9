"""Benchmark: reading an account's credits with 1,000 and with 1,000,000 ledger entries.

    python -m bench.balance [--small 1000] [--large 1000000] [--reads 2000]

Creates two accounts on a scratch database, bulk-loads their ledgers in SQL
(alternately 2 extra credits bought and 1 taken, each entry with the balance it
leaves) and sets each balance row to what its ledger sums to. Then, in the same
run and interleaved, reads each account's credits ``--reads`` times: in process
(``queries.credits`` in a transaction of its own, what the CLI and the HTTP
endpoint call), and over HTTP (``GET /v1/accounts/{id}/credits`` on the
Procfile's ``web`` line, one keep-alive connection). Prints p50, p99 and mean
for each, and the ratio large / small of the p50. Target: under 1.5, because a
read takes the balance row and never sums the ledger. Ends with
``casecredits ledger verify``; exits 1 if it or the figures read are wrong.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import text

from bench._harness import INTERNAL_TOKEN, Bench, BenchFailed, bench, free_port, wait_for
from db import queries
from db.engine import session_scope

RATIO_TARGET = 1.5
#: reads of one account in a row before switching to the other
BLOCK = 50
#: monthly credits of the bench plan
MONTHLY = 100

#: ledger entries 2..n of an account: +2 then -1 extra credits, alternately
ENTRIES = text("""
INSERT INTO ledger_entries (account_id, kind, bucket, amount, period, idempotency_key, reason,
                            monthly_after, extra_after, created_at)
SELECT b.account_id, CASE WHEN i % 2 = 1 THEN 'purchase' ELSE 'adjustment' END, 'extra',
       CASE WHEN i % 2 = 1 THEN 2 ELSE -1 END, b.period, 'bench:' || b.account_id || ':' || i,
       'bench load', b.monthly_remaining, (i + 1) / 2 * 2 - i / 2, :now
FROM generate_series(1, :n) AS i, balances b WHERE b.account_id = :account_id
""")
#: the balance row set to what its ledger sums to
RESUM = text("""
UPDATE balances SET extra_remaining = (
    SELECT coalesce(sum(amount), 0) FROM ledger_entries
    WHERE account_id = :account_id AND bucket = 'extra'), updated_at = :now
WHERE account_id = :account_id
""")


def load(b: Bench, account_id: str, entries: int) -> int:
    """Give ``account_id`` ``entries`` ledger entries in all; its extra credits after."""
    b.cli("account", "add", account_id, "--plan", "bench")
    now = datetime.now(UTC)
    with b.engine.begin() as conn:
        conn.execute(ENTRIES, {"account_id": account_id, "n": entries - 1, "now": now})
        conn.execute(RESUM, {"account_id": account_id, "now": now})
        held = conn.execute(text("SELECT extra_remaining FROM balances WHERE account_id = :a"),
                            {"a": account_id}).scalar_one()
    return int(held)


def timed(read: Callable[[str], Any], accounts: list[str], reads: int
          ) -> dict[str, list[float]]:
    """Milliseconds of each read, per account, in alternating blocks."""
    for account_id in accounts:  # warm caches and connections
        for _ in range(BLOCK):
            read(account_id)
    took: dict[str, list[float]] = {a: [] for a in accounts}
    for _ in range(0, reads, BLOCK):
        for account_id in accounts:
            for _ in range(BLOCK):
                start = time.perf_counter()
                read(account_id)
                took[account_id].append((time.perf_counter() - start) * 1000)
    return took


def describe(ms: list[float]) -> str:
    ordered = sorted(ms)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (f"p50 {statistics.median(ordered):.2f} ms, p99 {p99:.2f} ms, "
            f"mean {statistics.fmean(ordered):.2f} ms")


def run(*, small: int = 1_000, large: int = 1_000_000, reads: int = 2_000,
        out: Any = None) -> int:
    """Run the benchmark; print its lines to ``out``; 0 when every check holds, else 1."""
    out = out or sys.stdout

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    wrong: list[str] = []
    ratios: dict[str, float] = {}
    with bench("balance") as b:
        b.cli("plan", "add", "bench", "--monthly", str(MONTHLY))
        names = {f"ledger-{small}": small, f"ledger-{large}": large}
        expected: dict[str, int] = {}
        for account_id, entries in names.items():
            started = time.perf_counter()
            expected[account_id] = load(b, account_id, entries)
            say(f"{account_id}: {entries} ledger entries loaded in "
                f"{time.perf_counter() - started:.1f} s, {expected[account_id]} extra credits")
        with b.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
        accounts = list(names)

        def in_process(account_id: str) -> Any:
            with session_scope(b.sessions) as session:
                return queries.credits(session, account_id, now=datetime.now(UTC))

        for account_id in accounts:
            view = in_process(account_id)
            if view.extra_remaining != expected[account_id] or view.monthly_remaining != MONTHLY:
                wrong.append(f"{account_id} reads {view.extra_remaining} extra, "
                             f"{view.monthly_remaining} monthly")
        for how, took in (("in process", timed(in_process, accounts, reads)),
                          ("over HTTP", http_reads(b, accounts, reads))):
            for account_id in accounts:
                say(f"{how}, {account_id}: {describe(took[account_id])} ({reads} reads)")
            small_p50, large_p50 = (statistics.median(took[a]) for a in accounts)
            ratios[how] = large_p50 / small_p50
            say(f"{how}: ratio of p50 {names[accounts[1]]:,} / {names[accounts[0]]:,} entries: "
                f"{ratios[how]:.2f} target < {RATIO_TARGET}: "
                f"{'met' if ratios[how] < RATIO_TARGET else 'NOT met'}")
        verify = b.cli("ledger", "verify").strip()
        say(f"ledger verify: {verify}")
        if not verify.startswith("ok"):
            wrong.append("ledger verify failed")
    for line in wrong:
        say(f"WRONG: {line}")
    say("checks: " + ("ok" if not wrong else f"{len(wrong)} failed"))
    return 1 if wrong else 0


def http_reads(b: Bench, accounts: list[str], reads: int) -> dict[str, list[float]]:
    """The same reads through ``GET /v1/accounts/{id}/credits`` of the web process."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with b.process("web", extra_env={"PORT": str(port)}) as proc, \
            httpx.Client(base_url=base, timeout=10,
                         headers={"Authorization": f"Bearer {INTERNAL_TOKEN}"}) as client:
        def up() -> bool:
            if proc.poll() is not None:
                raise BenchFailed("the web process stopped:\n" + b.log_tail("web"))
            try:
                return client.get("/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=60, what="the web process")

        def read(account_id: str) -> Any:
            reply = client.get(f"/v1/accounts/{account_id}/credits")
            if reply.status_code != 200:
                raise BenchFailed(f"credits of {account_id}: {reply.status_code} {reply.text}")
            return reply.json()

        return timed(read, accounts, reads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--reads", type=int, default=2_000)
    args = parser.parse_args(argv)
    try:
        return run(small=args.small, large=args.large, reads=args.reads)
    except BenchFailed as exc:
        print(f"FAILED: {exc}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
