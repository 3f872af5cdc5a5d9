"""No contact's name, email, phone or birth date in any log line, whatever happens.

The real ``web`` and ``worker`` processes (debug level, JSON logs) take leads and
manual creations that carry one recognisable person, down every path: created,
duplicate, refused (no credits, unknown account), invalid, refused at the door
(bad credentials, unknown source, wrong content type, too large), failed after
its retries and dead-lettered, a lead whose stored payload no longer validates,
and the operator commands that look at what failed. Then every log line, and
everything those commands printed, is searched for the person.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from db import intake, sources
from db.engine import make_engine, make_session_factory, session_scope
from db.models import Event
from schemas.common import Channel
from schemas.leads import LeadProfile
from tests.api.conftest import signed
from tests.factories import setup_account
from tests.procs import MainApp, cli, running, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(180)]

FIRST, LAST = "Zebulon", "Quixotica-Marchbanks"
EMAIL = "zebulon.quixotica@example.org"
PHONE = "+1 (415) 555-0199"
BIRTH = "1961-07-23"
#: what must not appear, in the spellings it could take
NEEDLES = [FIRST, LAST, "Quixotica", "zebulon.quixotica", "4155550199", "555-0199",
           "555 0199", "5550199", BIRTH, "07/23/1961"]


def _person(**changes: str) -> dict[str, str]:
    return {"first_name": FIRST, "last_name": LAST, "email": EMAIL, "phone": PHONE,
            "date_of_birth": BIRTH, **changes}


def _manual(account_id: str, request_id: str, **changes: str) -> dict[str, object]:
    return {"request_id": request_id, "account_id": account_id, "created_by": "agent-7",
            "occurred_at": datetime.now(UTC).isoformat(), "client": _person(**changes)}


def _lead(**changes: str) -> dict[str, str]:
    return {"firstName": FIRST, "lastName": LAST, "Email": EMAIL, "phone_number": PHONE,
            "dob": BIRTH, **changes}


@pytest.fixture
def env(pg_url: str, redis_url: str, namespace: str, tmp_path: Path) -> dict[str, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return {"DATABASE_URL": pg_url, "REDIS_URL": redis_url, "BROKER_NAMESPACE": namespace,
            "VAR_DIR": str(tmp_path / "var"), "LOG_FORMAT": "json", "LOG_LEVEL": "DEBUG",
            "INTERNAL_API_TOKEN": "t", "PORT": str(port), "MAX_RETRIES": "1",
            "MIN_BACKOFF_MS": "50", "MAX_BACKOFF_MS": "200", "WORKER_PROCESSES": "1",
            "WORKER_THREADS": "2"}


@pytest.fixture
def sessions(env: dict[str, str]) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(env["DATABASE_URL"])
    yield make_session_factory(engine)
    engine.dispose()


def _settled(sessions: sessionmaker[Session], expected: int) -> bool:
    with session_scope(sessions) as s:
        done = s.execute(select(func.count()).select_from(Event)
                         .where(Event.status != "received")).scalar_one()
    return bool(done >= expected)


def test_no_personal_data_reaches_the_logs(env, sessions, tmp_path):
    now = datetime.now(UTC)
    setup_account(sessions, "acme", monthly=1, now=now)
    setup_account(sessions, "rich", plan="ent", unlimited=True, now=now)
    with session_scope(sessions) as s:
        funnel = sources.register(s, "acme", kind=Channel.funnel, name="f", now=now)
        website = sources.register(s, "acme", kind=Channel.website, name="w", now=now)
        stale = intake.record_lead(s, funnel.source, webhook_id="stale", raw_body="{}",
                                   content_type="application/json",
                                   lead=LeadProfile.model_validate(_person()), errors=None,
                                   now=now)[0].id
        # a stored lead that no longer validates (say, after a stricter release)
        s.execute(update(Event).where(Event.id == stale).values(
            payload={**_person(), "email": f"{FIRST}@@{LAST}"}))
    main = MainApp(env["REDIS_URL"], env["BROKER_NAMESPACE"])
    base = f"http://127.0.0.1:{env['PORT']}"
    logs = [tmp_path / "web.log", tmp_path / "worker.log"]
    printed: list[str] = []
    with running("web", env, logs[0]), running("worker", env, logs[1]):
        wait_for(lambda: _answers(base), timeout=60, what="the web process")
        main.send("profiles", "create_manual_profile", _manual("acme", "ok"))
        main.send("profiles", "create_manual_profile", _manual("acme", "ok"))  # duplicate
        main.send("profiles", "create_manual_profile", _manual("acme", "no-credits"))
        main.send("profiles", "create_manual_profile", _manual("nobody", "unknown-account"))
        main.send("profiles", "create_manual_profile",
                  _manual("acme", "invalid", email=f"{FIRST}@@{LAST}", last_name=""))
        main.send("profiles", "create_manual_profile",  # the database refuses a NUL
                  _manual("rich", "fails", first_name=f"{FIRST}\x00"))
        main.send("leads", "ingest_lead", {"event_id": stale})
        with httpx.Client(base_url=base, timeout=10) as http:
            body = json.dumps(_lead())
            url = f"/v1/hooks/{funnel.source.id}"
            answers = [
                http.post(url, content=body, headers=signed(funnel.secret, body, "l1")),
                http.post(url, content=body, headers=signed(funnel.secret, body, "l1")),
                http.post(f"/v1/hooks/{website.source.id}", data=_lead(),
                          headers={"authorization": f"Bearer {website.token}"}),
                http.post(url, content=json.dumps(_lead(Email=f"{FIRST}@")),
                          headers={"authorization": f"Bearer {funnel.token}",
                                   "content-type": "application/json"}),
                http.post(url, content=body, headers={"authorization": "Bearer wrong"}),
                http.post("/v1/hooks/src_nope", content=body,
                          headers={"authorization": "Bearer x"}),
                http.post(url, content=body, headers={"authorization": f"Bearer {funnel.token}",
                                                       "content-type": "text/plain"}),
                http.post(url, content=body * 2000,
                          headers={"authorization": f"Bearer {funnel.token}"}),
            ]
        assert [a.status_code for a in answers] == [202, 200, 202, 422, 401, 404, 415, 413]
        printed += [a.text for a in answers]
        wait_for(lambda: _settled(sessions, 7), timeout=60, what="every event's outcome")
        wait_for(lambda: len(main.dead_letters("profiles")) >= 1, what="dead letters")
        for args in (["dlq", "list"], ["dlq", "list", "--json"],
                     ["events", "sweep", "--older-than", "0"]):
            done = cli(*args, env=env)
            printed += [done.stdout, done.stderr]
    main.close()
    text = "\n".join(path.read_text(errors="replace") for path in logs)
    for path in ("profiles.created", "event.outcome", "message.dead_lettered"):
        assert path in text  # the paths ran
    for where, corpus in (("logs", text), ("command output", "\n".join(printed[8:]))):
        found = [n for n in NEEDLES if re.search(re.escape(n), corpus, re.IGNORECASE)]
        assert not found, f"personal data in the {where}: {found}: " + _context(corpus, found)


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _context(text: str, found: list[str]) -> str:
    match = re.search(re.escape(found[0]), text, re.IGNORECASE)
    assert match is not None
    return text[max(0, match.start() - 300):match.end() + 100]
