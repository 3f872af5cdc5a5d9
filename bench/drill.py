"""Fault drill: the real processes under load while workers die, Redis restarts, PostgreSQL stops.

    python -m bench.drill [--events 6000] [--rate 60] [--workers 2] [--seed 1]

Starts a redis-server without persistence and a PostgreSQL cluster (initdb,
trust auth) of its own on spare ports, runs the Procfile's ``release`` line,
sets up accounts and lead sources, then starts the Procfile's ``web``,
``worker`` (``--workers`` of them) and ``scheduler`` lines with the
environment pointing at those servers. While the load of ``bench/drill_load.py``
flows it:

1. SIGKILLs a whole worker (every process of the line) three times, and once a
   single worker process (dramatiq then stops the others gracefully), and
   starts the line again each time; for each it prints how many messages the
   dead processes held and how long until all of them were delivered again;
2. kills Redis and starts it again, empty;
3. stops PostgreSQL (``pg_ctl -m fast``) for ten seconds and starts it again.

Then it waits for the work to drain and checks (``bench/drill_checks.py``).
Manual messages acknowledged before Redis restarted and never processed were
lost with Redis: nothing on our side can know of them, so the drill does what
the main application does after its timeout and sends them again with the
same request id (it prints how many). Leads lost with Redis are recovered by the
sweeper alone. Exits 1 on any difference, 0 when every promise held.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import func, select

from bench import drill_checks, drill_load
from bench.drill_faults import Faults, Line, Recorder
from bench.servers import ScratchPostgres, ScratchRedis, spare_port
from db import ledger, sources
from db.engine import make_engine, make_session_factory, session_scope
from db.models import Event
from schemas.common import Channel
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "drill"
#: plans: code -> monthly allowance (None: unlimited)
PLANS = {"ent": None, "pro": 40, "zero": 0}
#: seconds the work gets to drain after the load, and again after the resends
DRAIN_TIMEOUT_S = 240.0


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["casecredits", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)


def setup_accounts(env: dict[str, str], url: str) -> dict[str, drill_load.Account]:
    """20 accounts: 4 unlimited, 12 with 40 monthly and 10 bought credits, 4 with none."""
    for code, monthly in PLANS.items():
        args = ["--unlimited"] if monthly is None else ["--monthly", str(monthly)]
        done = _cli(env, "plan", "add", code, *args)
        if done.returncode:
            raise SystemExit(f"plan add failed: {done.stderr}")
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    accounts: dict[str, drill_load.Account] = {}
    now = datetime.now(UTC)
    with session_scope(sessions) as s:
        for i in range(20):
            plan = "ent" if i < 4 else "zero" if i >= 16 else "pro"
            account_id = f"acct-{i:02d}"
            ledger.upsert_account(s, account_id, plan_code=plan, timezone=None,
                                  occurred_at=now, now=now)
            credits = PLANS[plan]
            if plan == "pro":
                ledger.purchase(s, purchase_id=f"buy-{i}", account_id=account_id, quantity=10,
                                amount_cents=9000, now=now)
                credits = 50
            account = drill_load.Account(account_id, credits)
            for kind in (Channel.website, Channel.funnel):
                created = sources.register(s, account_id, kind=kind, name=kind.value, now=now)
                assert created.token is not None
                account.sources[kind.value] = drill_load.Source(
                    created.source.id, kind.value, created.secret, created.token)
            accounts[account_id] = account
    engine.dispose()
    return accounts


def drained(client: redis.Redis, sessions: Any) -> bool:
    """No event waits in the inbox and the broker holds nothing for our actors."""
    try:
        for queue in ("profiles", "leads", "accounts"):
            if client.llen(f"{NAMESPACE}:{queue}") or client.hlen(f"{NAMESPACE}:{queue}.msgs") \
                    or client.hlen(f"{NAMESPACE}:{queue}.DQ.msgs"):
                return False
        with session_scope(sessions) as s:
            return not s.execute(select(func.count()).select_from(Event)
                                 .where(Event.status == "received")).scalar_one()
    except Exception:  # a server still coming back
        return False


def wait_drained(client: redis.Redis, sessions: Any, timeout: float) -> float:
    started = time.monotonic()
    stable = 0
    while time.monotonic() - started < timeout:
        stable = stable + 1 if drained(client, sessions) else 0
        if stable >= 6:
            return time.monotonic() - started
        time.sleep(0.5)
    raise SystemExit(f"the work did not drain within {timeout:.0f}s")


def main() -> int:  # noqa: PLR0915 (a script's one sequence)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=6000)
    parser.add_argument("--rate", type=float, default=60.0, help="sends per second")
    parser.add_argument("--workers", type=int, default=2, help="worker lines")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the logs and data")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cc_drill_"))
    root.chmod(0o755)  # the postgres user runs the cluster below it
    pg, rds = ScratchPostgres(root / "pg"), ScratchRedis(root / "redis")
    lines: list[Line] = []
    try:
        pg.init()
        pg.start()
        rds.start()
        url = pg.create_database("casecredits")
        port = spare_port()
        env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": rds.url,
               "BROKER_NAMESPACE": NAMESPACE, "INTERNAL_API_TOKEN": "drill-token",
               "LOG_FORMAT": "json", "PORT": str(port), "SWEEP_AFTER_S": "10",
               "SWEEP_EVERY_S": "5", "WORKER_PROCESSES": str(args.processes),
               "WORKER_THREADS": str(args.threads), "VAR_DIR": str(root / "var")}
        if _cli(env, "db", "upgrade").returncode:
            raise SystemExit("casecredits db upgrade failed")
        accounts = setup_accounts(env, url)
        logs = root / "logs"
        logs.mkdir()
        lines = [Line("web", env, logs), Line("scheduler", env, logs)]
        workers = [Line("worker", env, logs, index=i + 1) for i in range(args.workers)]
        lines += workers
        for line in lines:
            line.start()
        web = f"http://127.0.0.1:{port}"
        _wait_web(web)
        plan = drill_load.make_plan(list(accounts.values()), args.events, args.seed)
        channels = {c: sum(1 for s in plan if s.channel == c) for c in ("manual", "website",
                                                                         "funnel")}
        settings = Settings()
        print(f"drill: {len(plan)} sends {channels} at {args.rate:.0f}/s; {args.workers} "
              f"workers x {args.processes} processes x {args.threads} threads; heartbeat "
              f"timeout {settings.heartbeat_timeout_ms / 1000:.0f}s, maintenance chance "
              f"{settings.maintenance_chance:,}/1e6; logs {logs}")
        senders = drill_load.Senders(web_url=web, redis_url=rds.url, namespace=NAMESPACE,
                                     accounts=accounts)
        recorder = Recorder(rds.url, NAMESPACE)
        faults = Faults(workers, rds, pg, recorder, logs)
        load_s = len(plan) / args.rate
        recorder.start()
        started = time.monotonic() + 1
        fault_thread = threading.Thread(target=faults.run, args=(started, load_s), daemon=True)
        fault_thread.start()
        senders.run(plan, args.rate, started)
        print(f"load sent in {time.monotonic() - started:.0f}s")
        fault_thread.join()
        client = redis.Redis.from_url(rds.url)
        engine = make_engine(url)
        sessions = make_session_factory(engine)
        took = wait_drained(client, sessions, DRAIN_TIMEOUT_S)
        missing = drill_checks.missing_manual(sessions, plan)
        lost_with_redis = [s for s in missing if s.acked_at is not None
                           and s.acked_at < faults.redis_back_at]
        print(f"drained {took:.0f}s after the load; manual requests lost with Redis and sent "
              f"again: {len(lost_with_redis)}")
        if lost_with_redis:
            senders.resend(lost_with_redis)
            wait_drained(client, sessions, DRAIN_TIMEOUT_S)
        recorder.stop()
        tally = drill_checks.check(sessions, plan, accounts)
        tally.problems += faults.problems
        verify = _cli(env, "ledger", "verify")
        if verify.returncode:
            tally.problems.append(f"ledger verify: {verify.stdout.strip()} {verify.stderr}")
        dead = _cli(env, "dlq", "list", "--json")
        engine.dispose()
        for line in lines:
            line.stop()
        _report(faults, recorder, tally, lost_with_redis, verify.stdout.strip(), dead.stdout)
        return 1 if tally.problems else 0
    finally:
        for line in lines:
            line.stop()
        rds.destroy()
        if args.keep:
            print(f"kept {root}")
            with contextlib.suppress(RuntimeError):
                pg.stop("immediate")
        else:
            pg.destroy()
            shutil.rmtree(root, ignore_errors=True)


def _log_events(logs: Path, label: str, name: str) -> list[dict[str, Any]]:
    """The JSON log lines named ``name`` in a line's log."""
    found = []
    for text in (logs / f"{label}.log").read_text(errors="replace").splitlines():
        if f'"{name}"' in text:
            with contextlib.suppress(ValueError):
                found.append(json.loads(text))
    return [e for e in found if e.get("event") == name]


def _wait_web(web: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{web}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the web process did not answer")


def _report(faults: Faults, recorder: Recorder, tally: drill_checks.Tally,
            resent: list[drill_load.Send], verify: str, dead: str) -> None:
    print("faults:")
    for entry in faults.log:
        print(f"  {entry[0]}")
        for detail in entry[1:]:
            print(f"           {detail}")
    print(f"  longest heartbeat gap of a live worker process: {recorder.max_gap_s():.1f}s")
    failed_sends = _log_events(faults.logs, "web", "lead.enqueue_failed")
    swept = sum(int(e.get("enqueued", 0)) for e in _log_events(faults.logs, "scheduler",
                                                               "sweep.done"))
    print(f"  leads the receiver committed but could not enqueue: {len(failed_sends)}; "
          f"leads the sweeper sent again: {swept}")
    letters = json.loads(dead or "[]")
    permanent = sum(1 for d in letters if d["permanent"])
    print("counts:")
    for name in ("sent", "attempts", "acknowledged", "created", "refused", "invalid",
                 "duplicates", "charges"):
        print(f"  {name:<13}{getattr(tally, name):>7}")
    print(f"  resent after Redis lost them: {len(resent)}")
    print(f"  acknowledged = created + refused + invalid + duplicates: "
          f"{tally.acknowledged} = {tally.created} + {tally.refused} + {tally.invalid} + "
          f"{tally.duplicates}: {'yes' if tally.add_up() else 'NO'}")
    print(f"  dead letters: {len(letters)} ({permanent} invalid messages, by design)")
    if len(letters) != permanent:
        tally.problems.append(f"{len(letters) - permanent} messages exhausted their retries")
    print(f"ledger verify: {verify}")
    if tally.problems:
        print("DIFFERENCES:")
        for problem in tally.problems:
            print(f"  {problem}")
    else:
        print("ok: every acknowledged event has exactly one outcome, every manual profile one "
              "charge, no account below zero")


if __name__ == "__main__":
    sys.exit(main())
