"""The fault drill's load: a plan of mixed events, sent the way their real senders send them.

Manual creations go on the broker as the main application enqueues them; a send
is acknowledged when the enqueue returns. Leads are posted to the web process,
funnel ones signed (Standard Webhooks), website ones with the source's bearer
token and a ``webhook-id``, some as forms; a send is acknowledged by a 202 (or
200 for a webhook-id seen before, or 422 for an unusable lead, which is kept).
A sender that is not acknowledged (Redis down, a 503 while the database is
down, a timeout) tries again, with the same request id or webhook-id, as real
senders do. About 4 % of the events are invalid and 5 % of the sends repeat an
earlier one.
"""

from __future__ import annotations

import json
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import httpx
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message
from standardwebhooks.webhooks import Webhook

#: share of each channel among the events
CHANNELS = (("manual", 0.4), ("website", 0.3), ("funnel", 0.3))
INVALID_SHARE = 0.04
DUPLICATE_SHARE = 0.05
#: seconds between two tries of a send that was not acknowledged
RETRY_AFTER_S = 0.3
#: seconds between two waves of sends
WAVE_S = 5.0
FIRST = ("Avery", "Blake", "Casey", "Devon", "Emery", "Finley", "Harper", "Jordan", "Kendall")
LAST = ("Abbott", "Barlow", "Conway", "Dalton", "Ellison", "Fairley", "Garrick", "Hollis")


@dataclass
class Source:
    source_id: str
    kind: str
    secret: str
    token: str


@dataclass
class Account:
    account_id: str
    #: credits at the start (monthly + extra); None when unlimited
    credits: int | None
    sources: dict[str, Source] = field(default_factory=dict)


@dataclass
class Send:
    """One send of an event; a duplicate repeats the key of an earlier one."""

    n: int
    channel: str
    account_id: str
    key: str
    body: dict[str, Any]
    valid: bool
    duplicate: bool = False
    form: bool = False
    attempts: int = 0
    acked_at: float | None = None
    status: int | None = None
    error: str | None = None


def _person(rng: random.Random, n: int) -> dict[str, str]:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    return {"first": first, "last": last, "email": f"{first}.{last}.{n}@example.org".lower(),
            "phone": f"+1415555{n % 10_000:04d}"}


def _manual_body(account_id: str, key: str, person: dict[str, str], valid: bool
                 ) -> dict[str, Any]:
    client = {"first_name": person["first"], "last_name": person["last"] if valid else "",
              "email": person["email"]}
    return {"request_id": key, "account_id": account_id, "created_by": "drill",
            "occurred_at": datetime.now(UTC).isoformat(), "client": client}


def _lead_body(person: dict[str, str], valid: bool, rng: random.Random) -> dict[str, Any]:
    if not valid:
        return rng.choice([{"email": "not-an-email", "firstName": person["first"]},
                           {"comment": "call me maybe"}])
    return {"firstName": person["first"], "lastName": person["last"],
            "email": person["email"], "phone_number": person["phone"], "source": "manual"}


def make_plan(accounts: list[Account], total: int, seed: int) -> list[Send]:
    """``total`` sends: events in a random order, duplicates a little after their first."""
    rng = random.Random(seed)
    originals = round(total / (1 + DUPLICATE_SHARE))
    names = [c for c, _ in CHANNELS]
    weights = [w for _, w in CHANNELS]
    plan: list[Send] = []
    for n in range(originals):
        channel = rng.choices(names, weights)[0]
        account = rng.choice(accounts)
        valid = rng.random() >= INVALID_SHARE
        person = _person(rng, n)
        if channel == "manual":
            key = f"req-{n}"
            body = _manual_body(account.account_id, key, person, valid)
        else:
            key = f"wh-{n}"
            body = _lead_body(person, valid, rng)
        plan.append(Send(n=n, channel=channel, account_id=account.account_id, key=key,
                         body=body, valid=valid,
                         form=channel == "website" and rng.random() < 0.3))
    for _ in range(total - originals):
        first = rng.choice([s for s in plan if s.valid and not s.duplicate])
        copy = Send(n=len(plan), channel=first.channel, account_id=first.account_id,
                    key=first.key, body=first.body, valid=True, duplicate=True, form=first.form)
        plan.insert(min(len(plan), plan.index(first) + rng.randint(20, 400)), copy)
    return plan


class Senders:
    """Delivers a plan at a steady rate with threads of HTTP senders and one broker sender."""

    def __init__(self, *, web_url: str, redis_url: str, namespace: str,
                 accounts: dict[str, Account], http_threads: int = 8) -> None:
        self.web_url = web_url
        self.accounts = accounts
        client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=2)
        self.broker = RedisBroker(client=client, namespace=namespace, middleware=[],
                                  maintenance_chance=0)
        self.http: queue.Queue[Send | None] = queue.Queue()
        self.manual: queue.Queue[Send | None] = queue.Queue()
        self.threads = [threading.Thread(target=self._post_loop, daemon=True)
                        for _ in range(http_threads)]
        self.threads.append(threading.Thread(target=self._enqueue_loop, daemon=True))
        self.stopping = threading.Event()

    def run(self, plan: list[Send], rate: float, started: float) -> None:
        """Send every item of ``plan``, ``rate`` a second on average, and wait for every ack.

        Items go out in waves, every :data:`WAVE_S` seconds from ``started``, as
        a main application's imports and a form's busy minutes come, so that
        workers have messages in hand when a fault strikes.
        """
        for thread in self.threads:
            thread.start()
        for i, send in enumerate(plan):
            delay = started + (i / rate) // WAVE_S * WAVE_S - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            (self.manual if send.channel == "manual" else self.http).put(send)
        for _ in self.threads[:-1]:
            self.http.put(None)
        self.manual.put(None)
        for thread in self.threads:
            thread.join()

    def resend(self, sends: list[Send]) -> None:
        """Send manual creations again, as the main app does after its own timeout."""
        for send in sends:
            self._enqueue(send)

    def _post_loop(self) -> None:
        with httpx.Client(base_url=self.web_url, timeout=10) as client:
            while (send := self.http.get()) is not None:
                while not self._post(client, send):
                    time.sleep(RETRY_AFTER_S)

    def _enqueue_loop(self) -> None:
        while (send := self.manual.get()) is not None:
            self._enqueue(send)

    def _enqueue(self, send: Send) -> None:
        message: Message[Any] = Message(queue_name="profiles", actor_name="create_manual_profile",
                                        args=(send.body,), kwargs={}, options={})
        while True:
            send.attempts += 1
            try:
                self.broker.enqueue(message)
            except redis.RedisError:
                time.sleep(RETRY_AFTER_S)
                continue
            send.acked_at, send.status = time.monotonic(), 0
            return

    def _post(self, client: httpx.Client, send: Send) -> bool:
        """One try; True when the send is settled (acknowledged, or refused for good)."""
        source = self.accounts[send.account_id].sources[send.channel]
        if send.form:
            content = urlencode(send.body)
            headers = {"content-type": "application/x-www-form-urlencoded"}
        else:
            content = json.dumps(send.body)
            headers = {"content-type": "application/json"}
        if source.kind == "funnel":
            headers.update(webhook_id_headers(source.secret, send.key, content))
        else:
            headers.update({"authorization": f"Bearer {source.token}", "webhook-id": send.key})
        send.attempts += 1
        try:
            r = client.post(f"/v1/hooks/{source.source_id}", content=content, headers=headers)
        except httpx.HTTPError:
            return False
        if r.status_code in (200, 202, 422):
            send.acked_at, send.status = time.monotonic(), r.status_code
            return True
        if r.status_code >= 500:
            return False
        send.status, send.error = r.status_code, r.text[:200]
        return True


def webhook_id_headers(secret: str, webhook_id: str, body: str) -> dict[str, str]:
    """The Standard Webhooks headers a signing sender adds."""
    now = datetime.now(UTC)
    return {"webhook-id": webhook_id, "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign(webhook_id, now, body)}
