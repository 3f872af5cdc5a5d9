"""The fault drill's accounting: what was acknowledged, what the database holds, and whether
the promises held.

An event is identified as its sender identifies it: a manual creation by its
account and request id, a lead by its source and webhook-id. The checks:

* every acknowledged event has its outcome: a lead exactly one event row,
  ``created`` when it was usable and ``invalid`` when not; a manual creation
  ``created`` at most once, otherwise ``refused`` (or ``invalid``); no event is
  left ``received`` or ends ``failed``;
* every created profile has exactly one profile row, every manual one exactly
  one charge (``charge`` or ``unlimited_usage``) and no lead any charge;
* an account with K credits created exactly min(K, distinct valid requests)
  manual profiles and holds K minus that; none is below zero; ``ledger verify``
  holds (run by the drill as a command);
* a redelivered message is not recorded twice: no two manual rows share a
  broker message id.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from bench.drill_load import Account, Send
from db.engine import session_scope
from db.models import Balance, ClientProfile, Event, LedgerEntry


@dataclass
class Tally:
    sent: int = 0
    attempts: int = 0
    acknowledged: int = 0
    created: int = 0
    refused: int = 0
    invalid: int = 0
    duplicates: int = 0
    charges: int = 0
    problems: list[str] = field(default_factory=list)

    def add_up(self) -> bool:
        return self.acknowledged == self.created + self.refused + self.invalid + self.duplicates


def missing_manual(sessions: sessionmaker[Session], plan: list[Send]) -> list[Send]:
    """Acknowledged manual requests the database has no row of (one send each)."""
    with session_scope(sessions) as s:
        seen = {(a, r) for a, r in s.execute(
            select(Event.account_id, Event.external_id).where(Event.channel == "manual"))}
    out: dict[tuple[str, str], Send] = {}
    for send in plan:
        key = (send.account_id, send.key)
        if send.channel == "manual" and send.acked_at is not None and key not in seen:
            out.setdefault(key, send)
    return list(out.values())


def _problem(tally: Tally, what: str, items: list[str]) -> None:
    if items:
        tally.problems.append(f"{what}: {len(items)} (e.g. {', '.join(items[:3])})")


def check(sessions: sessionmaker[Session], plan: list[Send],
          accounts: dict[str, Account]) -> Tally:
    tally = Tally(sent=len(plan), attempts=sum(s.attempts for s in plan))
    acked = [s for s in plan if s.acked_at is not None]
    tally.acknowledged = len(acked)
    _problem(tally, "sends refused outright", [f"{s.key}: {s.status}" for s in plan
                                                if s.acked_at is None])
    with session_scope(sessions) as s:
        events = list(s.execute(select(Event.id, Event.channel, Event.account_id,
                                       Event.external_id, Event.status, Event.message_id)))
        profiles = Counter(s.execute(select(ClientProfile.event_id)).scalars())
        charges = Counter(s.execute(select(LedgerEntry.event_id).where(
            LedgerEntry.kind.in_(["charge", "unlimited_usage"]))).scalars())
        balances = {b.account_id: (b.monthly_remaining, b.extra_remaining)
                    for b in s.execute(select(Balance)).scalars()}
    tally.charges = sum(charges.values())
    rows: dict[tuple[str, str, str], list[tuple[str, str, str | None]]] = defaultdict(list)
    for event_id, channel, account_id, external_id, status, message_id in events:
        rows[(channel, account_id, external_id or "")].append((event_id, status, message_id))
        if status in ("received", "failed"):
            tally.problems.append(f"event {event_id} ({channel}) ended {status}")
    distinct: dict[tuple[str, str, str], Send] = {}
    for send in acked:
        key = (send.channel, send.account_id, send.key)
        if key in distinct:
            tally.duplicates += 1
        else:
            distinct[key] = send
    lost, twice, rerecorded, uncharged, wrong = [], [], [], [], []
    created_by_account: Counter[str] = Counter()
    for key, send in distinct.items():
        found = rows.get(key, [])
        statuses = Counter(status for _, status, _ in found)
        if not found:
            lost.append(send.key)
            continue
        if send.channel != "manual" and len(found) != 1:
            twice.append(send.key)
        if statuses["created"] > 1:
            twice.append(send.key)
        ids = [message_id for _, _, message_id in found if message_id]
        if send.channel == "manual" and len(ids) != len(set(ids)):
            rerecorded.append(f"{send.key} ({'/'.join(sorted(statuses))})")
        expected = {"created", "refused"} if send.valid else {"invalid"}
        if send.channel != "manual":
            expected = {"created"} if send.valid else {"invalid"}
        if not set(statuses) <= expected | {"duplicate"}:
            wrong.append(f"{send.key}: {dict(statuses)}")
        if statuses["created"]:
            tally.created += 1
            [event_id] = [e for e, status, _ in found if status == "created"]
            want = 1 if send.channel == "manual" else 0
            if profiles[event_id] != 1 or charges[event_id] != want:
                uncharged.append(f"{send.key}: {profiles[event_id]} profiles, "
                                 f"{charges[event_id]} charges")
            if send.channel == "manual":
                created_by_account[send.account_id] += 1
        elif statuses["invalid"]:
            tally.invalid += 1
        else:
            tally.refused += 1
    _problem(tally, "acknowledged events with no outcome", lost)
    _problem(tally, "events with more than one outcome", twice)
    _problem(tally, "manual messages recorded twice when delivered again (one message, two "
                    "event rows)", rerecorded)
    _problem(tally, "events with the wrong outcome", wrong)
    _problem(tally, "profiles without exactly one profile row and charge", uncharged)
    _check_credits(tally, distinct, accounts, created_by_account, balances)
    if not tally.add_up():
        tally.problems.append("the counts do not add up")
    return tally


def _check_credits(tally: Tally, distinct: dict[tuple[str, str, str], Send],
                   accounts: dict[str, Account], created: Counter[str],
                   balances: dict[str, tuple[int, int]]) -> None:
    requests = Counter(send.account_id for (channel, _, _), send in distinct.items()
                       if channel == "manual" and send.valid)
    for account_id, account in accounts.items():
        monthly, extra = balances[account_id]
        if monthly < 0 or extra < 0:
            tally.problems.append(f"account {account_id} below zero: {monthly}/{extra}")
        if account.credits is None:
            expected = requests[account_id]
        else:
            expected = min(account.credits, requests[account_id])
            if monthly + extra != account.credits - expected:
                tally.problems.append(f"account {account_id} holds {monthly + extra}, "
                                      f"expected {account.credits - expected}")
        if created[account_id] != expected:
            tally.problems.append(f"account {account_id}: {created[account_id]} created, "
                                  f"expected min(credits, requests) = {expected}")
