"""Benchmark: the scheduled, set-based renewal against renewing one account at a time.

    python bench/renewal.py [--accounts 100000] [--single 2000] [--chunk 2000] [--workers 2]

Creates a scratch PostgreSQL database ``cc_bench_renewal_<hex>`` (dropped at the
end, whatever happens), bulk-loads the accounts with their balances and ledger
in SQL, then in the same run times ``ledger.renew_account`` for ``--single``
accounts, one transaction each, and ``renewal.renew_due`` over the other
``--accounts``. Prints accounts per second for both and their ratio, with the CPU
time each used (this process, and the server's processes when the server is local)
and the load average, since other work on the machine stretches wall times; then
checks every balance against its ledger.

The server is ``BENCH_PG_ADMIN_URL`` (default: ``TEST_PG_ADMIN_URL`` or
``postgresql://postgres@127.0.0.1:5432/postgres``); it needs CREATE DATABASE.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import LiteralString

import psycopg
from psycopg import sql
from sqlalchemy.orm import Session, sessionmaker

from db import ledger, renewal
from db.engine import make_engine, make_session_factory, session_scope
from db.migrate import upgrade
from db.periods import period_bounds

ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", os.environ.get(
    "TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
ZONES = ("UTC", "America/Los_Angeles", "America/New_York", "Europe/Berlin", "Asia/Kolkata",
         "Pacific/Kiritimati")
#: the period every account starts in, and an instant when all of them are due
PERIOD = "2025-11"
DUE_AT = datetime(2025, 12, 2, tzinfo=UTC)
CREATED_AT = datetime(2025, 11, 10, tzinfo=UTC)

#: plan by ``i % 10``: 1 unlimited, 1 with no allowance, 4 basic, 4 pro; every 7th pro
#: account has a downgrade pending, every 3rd has bought extra credits
PLANS: LiteralString = """
INSERT INTO plans (code, monthly_allowance, unlimited, created_at) VALUES
  ('ent', NULL, true, %(t)s), ('zero', 0, false, %(t)s), ('basic', 5, false, %(t)s),
  ('pro', 50, false, %(t)s)
"""
ACCOUNTS: LiteralString = """
INSERT INTO accounts (id, plan_code, pending_plan_code, timezone, changed_at, created_at,
                      updated_at)
SELECT %(prefix)s || lpad(i::text, 6, '0'), plan, CASE WHEN plan = 'pro' AND i %% 7 = 0
       THEN 'basic' END, (%(zones)s::text[])[1 + i %% cardinality(%(zones)s::text[])],
       %(t)s, %(t)s, %(t)s
FROM generate_series(1, %(n)s) AS i,
     LATERAL (SELECT CASE WHEN i %% 10 = 0 THEN 'ent' WHEN i %% 10 = 1 THEN 'zero'
                          WHEN i %% 10 < 6 THEN 'basic' ELSE 'pro' END AS plan) AS p
"""
BALANCES: LiteralString = """
INSERT INTO balances (account_id, period, period_start, period_end, monthly_allowance,
                      unlimited, monthly_used, monthly_remaining, extra_remaining,
                      unlimited_used, updated_at)
SELECT a.id, %(period)s, z.period_start, z.period_end, p.monthly_allowance, p.unlimited,
       u.used, coalesce(p.monthly_allowance, 0) - u.used,
       CASE WHEN right(a.id, 6)::int %% 3 = 0 THEN 10 ELSE 0 END, 0, %(t)s
FROM accounts a JOIN plans p ON p.code = a.plan_code
JOIN unnest(%(zones)s::text[], %(starts)s::timestamptz[], %(ends)s::timestamptz[])
     AS z(tz, period_start, period_end) ON z.tz = a.timezone,
LATERAL (SELECT least(coalesce(p.monthly_allowance, 0), right(a.id, 6)::int %% 4) AS used) u
"""
ENTRIES: LiteralString = """
INSERT INTO ledger_entries (account_id, kind, bucket, amount, period, idempotency_key, reason,
                            monthly_after, extra_after, created_at)
SELECT account_id, kind, bucket, amount, %(period)s, key, reason, m, x, %(t)s FROM (
  SELECT b.account_id, 1 AS n, 'grant' AS kind,
         CASE WHEN b.unlimited THEN 'unlimited' ELSE 'monthly' END AS bucket,
         coalesce(b.monthly_allowance, 0) AS amount,
         'grant:' || b.account_id || ':' || %(period)s AS key, 'plan ' || a.plan_code AS reason,
         coalesce(b.monthly_allowance, 0) AS m, 0 AS x
  FROM balances b JOIN accounts a ON a.id = b.account_id
  UNION ALL
  SELECT account_id, 2, 'purchase', 'extra', 10, 'purchase:bench-' || account_id,
         '9000 cents', coalesce(monthly_allowance, 0), 10
  FROM balances WHERE extra_remaining > 0
  UNION ALL
  SELECT account_id, 3, 'adjustment', 'monthly', -monthly_used, 'adjust:bench-' || account_id,
         'bench: usage', monthly_remaining, extra_remaining
  FROM balances WHERE monthly_used > 0
) AS e ORDER BY account_id, n
"""


def load(url: str, *, accounts: int, single: int) -> None:
    """Plans, accounts ``s-000001``... and ``l-000001``..., balances and their ledger."""
    bounds = [period_bounds(PERIOD, tz) for tz in ZONES]
    with psycopg.connect(url) as conn:
        conn.execute(PLANS, {"t": CREATED_AT})
        for prefix, n in (("s-", accounts), ("l-", single)):
            conn.execute(ACCOUNTS, {"prefix": prefix, "n": n, "zones": list(ZONES),
                                    "t": CREATED_AT})
        conn.execute(BALANCES, {"period": PERIOD, "zones": list(ZONES),
                                "starts": [b[0] for b in bounds],
                                "ends": [b[1] for b in bounds], "t": CREATED_AT})
        conn.execute(ENTRIES, {"period": PERIOD, "t": CREATED_AT})
        conn.commit()
        conn.execute("ANALYZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--single", type=int, default=2_000)
    parser.add_argument("--chunk", type=int, default=renewal.CHUNK)
    parser.add_argument("--workers", type=int, default=renewal.WORKERS)
    args = parser.parse_args()
    name = f"cc_bench_renewal_{uuid.uuid4().hex[:8]}"
    url = f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    engine = None
    try:
        upgrade(url)
        started = time.perf_counter()
        load(url, accounts=args.accounts, single=args.single)
        print(f"database {name}: {args.accounts + args.single} accounts in {len(ZONES)} zones "
              f"loaded in {time.perf_counter() - started:.1f} s")
        engine = make_engine(url)
        factory = make_session_factory(engine)
        one, five, _ = os.getloadavg()
        print(f"machine: {os.cpu_count()} cores, load average {one:.1f} (1 min), "
              f"{five:.1f} (5 min)")
        single_rate = time_single(factory, args.single, name)
        bulk_rate = time_bulk(factory, args.accounts, args.chunk, args.workers, name)
        ratio = bulk_rate / single_rate
        print(f"ratio: set-based is {ratio:.1f}x one-at-a-time "
              f"({'meets' if ratio >= 10 else 'MISSES'} the 10x target)")
        with session_scope(factory) as session:
            mismatches = ledger.verify(session)
        print("ledger verify: " + ("ok" if not mismatches else f"{len(mismatches)} mismatches"))
    finally:
        if engine is not None:
            engine.dispose()
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                          .format(sql.Identifier(name)))
        print(f"database {name} dropped")


def time_single(factory: sessionmaker[Session], n: int, database: str) -> float:
    ids = [f"l-{i:06d}" for i in range(1, n + 1)]

    def renew_each() -> int:
        renewed = 0
        for account_id in ids:
            with session_scope(factory) as session:
                renewed += ledger.renew_account(session, account_id, DUE_AT)
        return renewed

    renewed, usage = measure(renew_each, database)
    assert renewed == n, renewed
    rate = n / usage.wall_s
    print(f"one at a time (ledger.renew_account, a transaction each): {n} accounts "
          f"in {usage.wall_s:.2f} s = {rate:,.0f} accounts/s; {usage}")
    return rate


def time_bulk(factory: sessionmaker[Session], n: int, chunk: int, workers: int,
              database: str) -> float:
    renewed, usage = measure(
        lambda: renewal.renew_due(factory, now=DUE_AT, chunk=chunk, workers=workers), database)
    assert renewed == n, renewed
    rate = n / usage.wall_s
    print(f"set-based (renewal.renew_due, {chunk} per transaction, {workers} workers): "
          f"{n} accounts in {usage.wall_s:.2f} s = {rate:,.0f} accounts/s"
          f" ({'under' if usage.wall_s < 10 else 'OVER'} the 10 s target); {usage}")
    return rate


@dataclass(frozen=True)
class Usage:
    """Wall time and CPU time: other work on the machine stretches the first, not the second."""

    wall_s: float
    python_cpu_s: float
    #: CPU of the server processes serving this database; None when they cannot be read
    server_cpu_s: float | None

    def __str__(self) -> str:
        server = "?" if self.server_cpu_s is None else f"{self.server_cpu_s:.2f} s"
        one, five, _ = os.getloadavg()
        return (f"cpu used: python {self.python_cpu_s:.2f} s, postgres {server}; "
                f"load average {one:.1f} (1 min), {five:.1f} (5 min)")


def measure(run: Callable[[], int], database: str) -> tuple[int, Usage]:
    server_before = _server_cpu(database)
    cpu_before, started = time.process_time(), time.perf_counter()
    result = run()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_before
    server_after = _server_cpu(database)
    server = None
    if server_before is not None and server_after is not None:
        server = sum(used - server_before.get(pid, 0.0) for pid, used in server_after.items())
    return result, Usage(wall, cpu, server)


def _server_cpu(database: str) -> dict[int, float] | None:
    """CPU seconds of each server process connected to ``database`` (a local server)."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        pids = [row[0] for row in admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,))]
    used: dict[int, float] = {}
    try:
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            used[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None
    return used


if __name__ == "__main__":
    main()
