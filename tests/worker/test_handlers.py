"""The manual-creation handler's log lines: created profiles a batch at a time, every
other outcome on a line of its own."""

from __future__ import annotations

import pytest

from schemas.common import Status
from schemas.messages import CreateManualProfile
from tests.factories import manual_payload, setup_account
from worker import broker as broker_mod
from worker import handlers, logs, runtime


@pytest.fixture
def outcomes_sent(service_env, monkeypatch) -> list[dict]:
    """The outcomes the handler publishes, kept here instead of sent to Redis (the
    lines are the point of these tests, not the broker)."""
    sent: list[dict] = []
    monkeypatch.setattr(broker_mod, "publish_many",
                        lambda _queue, _actor, payloads: sent.extend(payloads))
    logs.configure(fmt="json")
    return sent


def _lines_with(text: str, marker: str) -> list[str]:
    return [line for line in text.splitlines() if marker in line]


def test_a_batch_logs_its_created_profiles_on_one_line(outcomes_sent, capsys):
    setup_account(runtime.sessions(), "a", monthly=2, now=runtime.now())
    batch = [(CreateManualProfile.model_validate(manual_payload("a", f"r{i}")), f"m{i}")
             for i in range(3)]
    outcomes = handlers._create_manual_batch(batch)
    assert [o.status for o in outcomes] == [Status.created, Status.created, Status.refused]
    assert len(outcomes_sent) == 3
    [line] = _lines_with(capsys.readouterr().err, "profiles.created")
    for created in outcomes[:2]:
        assert created.event_id in line
    assert outcomes[2].event_id not in line
    assert '"message_ids": ["m0", "m1"]' in line
    assert '"charged_buckets": ["monthly", "monthly"]' in line


def test_a_creation_is_logged_once_and_any_other_outcome_on_its_own_line(outcomes_sent,
                                                                          capsys):
    setup_account(runtime.sessions(), "a", monthly=1, now=runtime.now())
    created = handlers.create_manual_profile(manual_payload("a", "r1"), message_id="m1")
    refused = handlers.create_manual_profile(manual_payload("a", "r2"), message_id="m2")
    assert (created.status, refused.status) == (Status.created, Status.refused)
    err = capsys.readouterr().err
    assert [created.event_id in line for line in _lines_with(err, "profiles.created")] == [True]
    [outcome] = _lines_with(err, "event.outcome")
    assert refused.event_id in outcome and '"status": "refused"' in outcome
    assert created.event_id not in outcome
