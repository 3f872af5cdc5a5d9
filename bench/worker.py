"""Benchmark: manual creations through the real worker, against reference actors, in one run.

    python -m bench.worker [--messages 20000] [--accounts 1000] [--hot-messages 5000]
                           [--hot-credits 3000] [--rounds 3] [--py-spy DIR] [--threads 8]

Each round enqueues a batch of messages first, then starts the Procfile's
``worker`` line (2 processes x 8 threads, or ``--threads``) and times how fast the queue drains:

1. the no-op actor of ``bench.noop_actors`` (the same worker line with that
   module in place of ``worker.actors``), ``--messages`` manual-creation payloads;
2. the bare-charge actor of the same module on the same payloads: one transaction
   that locks the balance, takes a credit and appends an entry (the issue's
   second reference figure, measured here in the same run);
3. ``--messages`` manual creations spread evenly over ``--accounts`` accounts,
   each with credits to spare: all created;
4. ``--hot-messages`` creations on one account holding ``--hot-credits``
   (a third monthly, the rest bought): exactly that many created, the rest refused.

A rate is messages acknowledged per second, from the moment 2% of the queue is
done (the processes have started) to the last acknowledgement; the CPU each
party used over that window is printed per message. Afterwards every outcome,
count and balance is checked and ``casecredits ledger verify`` runs; the script
exits 1 if any check fails. Targets: 3 at least 0.40 of 1, 4 at least 0.50 of 3.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench._harness import Bench, BenchFailed, CpuSample, bench, cpu_sample, message, send_all
from db import ledger
from db.engine import session_scope
from db.models import Balance, ClientProfile, Event, LedgerEntry
from schemas.messages import QUEUE_OUTCOMES, QUEUE_PROFILES

PROCESSES, THREADS = 2, 8
#: the actors of ``bench.noop_actors``, which are sent the payloads of
#: ``create_manual_profile``. Named here: importing that module sets up a broker (and,
#: with no ``REDIS_URL``, starts the embedded Redis), which only its worker may do
NOOP_ACTOR = "noop"
BARE_CHARGE_ACTOR = "bare_charge"
#: the share of a queue that must be done before the clock starts (process start-up)
WARM_SHARE = 0.02
#: seconds between two looks at a queue
POLL_S = 0.01
#: credits each spread account has beyond what the run sends it
SPARE = 10
RATIO_TARGET, HOT_TARGET = 0.40, 0.50


@dataclass(frozen=True, slots=True)
class Drain:
    """How fast a queue emptied: ``messages`` timed over ``seconds``, and the CPU it took."""

    messages: int
    seconds: float
    cpu: CpuSample

    def cpu_line(self) -> str:
        """Milliseconds of CPU per message, by who spent them."""
        per = 1000 / max(1, self.messages)
        c = self.cpu
        return (f"cpu per message: worker {c.group * per:.2f} ms, postgres {c.postgres * per:.2f}"
                f" ms, redis {c.redis * per:.2f} ms, whole machine {c.machine * per:.2f} ms "
                f"({c.machine / self.seconds * 100:.0f}% of one core busy)")

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


def payload(account_id: str, request_id: str) -> dict[str, Any]:
    """A ``create_manual_profile`` message as the main application sends it."""
    return {"request_id": request_id, "account_id": account_id, "created_by": "agent-7",
            "occurred_at": datetime.now(UTC).isoformat(),
            "client": {"first_name": "Ada", "last_name": "Lovelace",
                       "email": "ada.lovelace@example.com", "phone": "+1 415 555 2671",
                       "state": "CA", "extra": {"lead_source": "bench"}}}


def worker_command(b: Bench, module: str) -> str:
    """The Procfile's ``worker`` line, with ``module`` in place of ``worker.actors``."""
    line = b.procfile_line("worker")
    if module == "worker.actors":
        return line
    if "worker.actors" not in line:
        raise BenchFailed(f"cannot swap the actors module in the worker line: {line!r}")
    return line.replace("worker.actors", module)


def drain(b: Bench, messages: list[Any], *, module: str, timeout: float = 900,
          profile: Path | None = None) -> Drain:
    """Enqueue ``messages``, start the worker line on ``module``, time the queue emptying.

    :param profile: record the worker processes with py-spy into this file
        (collapsed stacks) while the queue drains; the rate is then not comparable.
    """
    send_all(b.producer(), messages)
    total = len(messages)
    client = b.redis()
    if b.pending(client, QUEUE_PROFILES) != total:
        raise BenchFailed(f"the profiles queue holds {b.pending(client, QUEUE_PROFILES)} "
                          f"messages, not this run's {total}")
    warm_at = total - max(1, int(total * WARM_SHARE))
    start: tuple[float, int] | None = None
    with b.process("worker", command=worker_command(b, module),
                   extra_env={"WORKER_PROCESSES": str(PROCESSES),
                              "WORKER_THREADS": str(THREADS)}) as proc, \
            py_spy(proc.pid, profile):
        deadline = time.monotonic() + timeout
        while True:
            left = b.pending(client, QUEUE_PROFILES)
            now = time.perf_counter()
            if start is None and left <= warm_at:
                start = (now, left)
                cpu_start = cpu_sample(proc.pid)
            if left == 0:
                cpu_used = cpu_sample(proc.pid) - cpu_start
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchFailed(f"the worker stopped with {left} messages left:\n"
                                  + b.log_tail("worker"))
            time.sleep(POLL_S)
    assert start is not None
    return Drain(messages=start[1], seconds=now - start[0], cpu=cpu_used)


@contextmanager
def py_spy(pid: int, path: Path | None) -> Iterator[None]:
    """``py-spy record`` the process ``pid`` and its children into ``path`` (when given)."""
    if path is None:
        yield
        return
    spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--subprocesses",
                            "--rate", "200", "--format", "raw", "--output", str(path),
                            "--nonblocking", "--gil"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)


# -- scenarios --------------------------------------------------------------------------

def setup_spread(b: Bench, *, accounts: int, allowance: int) -> list[str]:
    """``accounts`` accounts on a plan of ``allowance`` credits a month."""
    b.cli("plan", "add", "bench", "--monthly", str(allowance))
    now = datetime.now(UTC)
    ids = [f"acct-{i:05d}" for i in range(accounts)]
    with session_scope(b.sessions) as s:
        for account_id in ids:
            ledger.upsert_account(s, account_id, plan_code="bench", timezone=None,
                                  occurred_at=now, now=now)
    return ids


def setup_hot(b: Bench, account_id: str, credits: int) -> tuple[int, int]:
    """One account holding ``credits``: a third monthly, the rest bought. (monthly, extra)"""
    monthly = credits // 3
    extra = credits - monthly
    b.cli("plan", "add", f"hot-{monthly}", "--monthly", str(monthly))
    b.cli("account", "add", account_id, "--plan", f"hot-{monthly}")
    if extra:
        b.cli("credits", "buy", account_id, str(extra), "--ref", f"seed-{account_id}")
    return monthly, extra


def spread_messages(ids: list[str], per_account: int, tag: str, *,
                    actor: str = "create_manual_profile") -> list[Any]:
    """``per_account`` creations for each account, in a shuffled order, sent to ``actor``."""
    order = [(account_id, n) for account_id in ids for n in range(per_account)]
    random.Random(tag).shuffle(order)
    return [message(QUEUE_PROFILES, actor, payload(account_id, f"{tag}-{account_id}-{n}"))
            for account_id, n in order]


# -- checks ---------------------------------------------------------------------------

def outcomes(b: Bench) -> list[dict[str, Any]]:
    return [json.loads(raw)["args"][0] for raw in b.published(QUEUE_OUTCOMES)]


def _count(b: Bench, model: Any, *where: Any) -> int:
    with session_scope(b.sessions) as s:
        return int(s.execute(select(func.count()).select_from(model).where(*where))
                   .scalar_one())


def check_spread(b: Bench, ids: list[str], *, sent: int, allowance: int, used: int,
                 bare: int) -> list[str]:
    """What is wrong after the spread runs (empty when all is right)."""
    wrong: list[str] = []
    mine = [o for o in outcomes(b) if o["account_id"].startswith("acct-")]
    statuses = Counter((o["status"], o["charged_bucket"]) for o in mine)
    if statuses != {("created", "monthly"): sent}:
        wrong.append(f"spread outcomes {dict(statuses)}, expected {sent} created (monthly)")
    in_accounts = LedgerEntry.account_id.in_(ids)
    for what, got in (
            ("created events", _count(b, Event, Event.status == "created",
                                      Event.account_id.in_(ids))),
            ("profiles", _count(b, ClientProfile, ClientProfile.account_id.in_(ids))),
            ("charges", _count(b, LedgerEntry, LedgerEntry.kind == "charge", in_accounts))):
        if got != sent:
            wrong.append(f"spread {what}: {got}, expected {sent}")
    with session_scope(b.sessions) as s:
        off = s.execute(select(func.count()).select_from(Balance).where(
            Balance.account_id.in_(ids),
            (Balance.monthly_remaining != allowance - used - bare)
            | (Balance.monthly_used != used))).scalar_one()
    if off:
        wrong.append(f"{off} spread balances are not {allowance - used - bare} remaining")
    return wrong


def check_hot(b: Bench, account_id: str, *, sent: int, monthly: int,
              extra: int) -> list[str]:
    wrong: list[str] = []
    created = min(sent, monthly + extra)
    mine = [o for o in outcomes(b) if o["account_id"] == account_id]
    statuses = Counter((o["status"], o["charged_bucket"]) for o in mine)
    expected = Counter({("created", "monthly"): min(sent, monthly),
                        ("created", "extra"): created - min(sent, monthly),
                        ("refused", None): sent - created})
    if statuses != +expected:
        wrong.append(f"hot outcomes {dict(statuses)}, expected {dict(+expected)}")
    for what, got, want in (
            ("profiles", _count(b, ClientProfile, ClientProfile.account_id == account_id),
             created),
            ("charges", _count(b, LedgerEntry, LedgerEntry.account_id == account_id,
                               LedgerEntry.kind == "charge"), created),
            ("refused events without a key", _count(
                b, Event, Event.account_id == account_id, Event.status == "refused",
                Event.dedupe_key.is_(None)), sent - created)):
        if got != want:
            wrong.append(f"hot {what}: {got}, expected {want}")
    with session_scope(b.sessions) as s:
        balance = s.get(Balance, account_id)
        held = (balance.monthly_remaining, balance.extra_remaining) if balance else None
    want_held = (max(0, monthly - sent), monthly + extra - created - max(0, monthly - sent))
    if held != want_held:
        wrong.append(f"hot balance {held}, expected {want_held}")
    return wrong


# -- the run --------------------------------------------------------------------------

def run(*, messages: int, accounts: int, hot_messages: int, hot_credits: int, rounds: int = 1,
        references: bool = True, profile: Path | None = None, out: Any = None) -> int:
    """Run the benchmark; print its lines to ``out``; 0 when every check holds, else 1.

    :param references: also time the no-op and the bare-charge actors (the ratios).
    """
    out = out or sys.stdout

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    per_account = max(1, messages // accounts)
    sent = per_account * accounts
    bare_each = per_account * rounds if references else 0
    allowance = per_account * rounds + bare_each + SPARE
    say(f"worker bench: {PROCESSES} processes x {THREADS} threads, {sent} creations over "
        f"{accounts} accounts, {hot_messages} on one account holding {hot_credits} credits, "
        f"{rounds} round(s)")
    wrong: list[str] = []
    ratios: list[float] = []
    hot_ratios: list[float] = []
    with bench("worker") as b:
        ids = setup_spread(b, accounts=accounts, allowance=allowance)
        for r in range(1, rounds + 1):
            tag = f"r{r}-{uuid.uuid4().hex[:6]}"
            if references:
                base = drain(b, spread_messages(ids, per_account, f"noop-{tag}",
                                                actor=NOOP_ACTOR), module="bench.noop_actors")
                say(f"round {r} noop: {base.messages} messages in {base.seconds:.2f} s = "
                    f"{base.rate:.0f} msg/s; {base.cpu_line()}")
                bare = drain(b, spread_messages(ids, per_account, f"bare-{tag}",
                                                actor=BARE_CHARGE_ACTOR),
                             module="bench.noop_actors")
                say(f"round {r} bare charge: {bare.messages} messages in {bare.seconds:.2f} s = "
                    f"{bare.rate:.0f} msg/s, {bare.rate / base.rate:.2f} of noop; "
                    f"{bare.cpu_line()}")
            spread = drain(b, spread_messages(ids, per_account, tag), module="worker.actors",
                           profile=profile / f"manual-r{r}.txt" if profile else None)
            say(f"round {r} manual, {accounts} accounts: {spread.messages} messages in "
                f"{spread.seconds:.2f} s = {spread.rate:.0f} msg/s; {spread.cpu_line()}")
            if references:
                ratios.append(spread.rate / base.rate)
                say(f"round {r} ratio manual/noop: {ratios[-1]:.2f} "
                    f"(target >= {RATIO_TARGET:.2f}); manual/bare charge: "
                    f"{spread.rate / bare.rate:.2f}")
            hot_id = f"hot-{r}"
            monthly, extra = setup_hot(b, hot_id, hot_credits)
            hot = drain(b, [message(QUEUE_PROFILES, "create_manual_profile",
                                    payload(hot_id, f"{tag}-hot-{i}"))
                            for i in range(hot_messages)], module="worker.actors")
            hot_ratios.append(hot.rate / spread.rate)
            say(f"round {r} manual, 1 account: {hot.messages} messages in {hot.seconds:.2f} s "
                f"= {hot.rate:.0f} msg/s; ratio hot/spread: {hot_ratios[-1]:.2f} "
                f"(target >= {HOT_TARGET:.2f}); {hot.cpu_line()}")
            found = check_hot(b, hot_id, sent=hot_messages, monthly=monthly, extra=extra)
            created = min(hot_messages, hot_credits)
            say(f"round {r} hot account: {created} created, {hot_messages - created} refused "
                + ("(checked)" if not found else "(WRONG)"))
            wrong += found
        wrong += check_spread(b, ids, sent=sent * rounds, allowance=allowance,
                              used=per_account * rounds, bare=bare_each)
        verify = b.cli("ledger", "verify").strip()
        say(f"ledger verify: {verify}")
        if not verify.startswith("ok"):
            wrong.append("ledger verify failed")
    if ratios:
        ratio = statistics.median(ratios)
        say(f"ratio manual/noop (median of {len(ratios)}): {ratio:.3f} "
            f"target >= {RATIO_TARGET:.2f}: {'met' if ratio >= RATIO_TARGET else 'NOT met'}")
    hot_ratio = statistics.median(hot_ratios)
    say(f"ratio hot/spread (median of {len(hot_ratios)}): {hot_ratio:.3f} "
        f"target >= {HOT_TARGET:.2f}: {'met' if hot_ratio >= HOT_TARGET else 'NOT met'}")
    for line in wrong:
        say(f"WRONG: {line}")
    say("checks: " + ("ok" if not wrong else f"{len(wrong)} failed"))
    return 1 if wrong else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--hot-messages", type=int, default=5_000)
    parser.add_argument("--hot-credits", type=int, default=3_000)
    parser.add_argument("--rounds", type=int, default=3,
                        help="repeat every run this many times and print the medians")
    parser.add_argument("--no-references", dest="references", action="store_false",
                        help="skip the no-op and bare-charge actors (no ratios)")
    parser.add_argument("--py-spy", type=Path, default=None, metavar="DIR",
                        help="record the manual run's worker with py-spy into DIR")
    parser.add_argument("--threads", type=int, default=THREADS,
                        help="WORKER_THREADS of every run, the no-op's too (default 8)")
    args = parser.parse_args(argv)
    globals()["THREADS"] = args.threads
    try:
        return run(messages=args.messages, accounts=args.accounts,
                   hot_messages=args.hot_messages, hot_credits=args.hot_credits,
                   rounds=args.rounds, references=args.references,
                   profile=args.py_spy)
    except BenchFailed as exc:
        print(f"FAILED: {exc}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
