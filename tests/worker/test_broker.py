"""Outcomes published in one round trip reach a consumer as ``enqueue`` would send them."""

from __future__ import annotations

from collections.abc import Iterator

import dramatiq
import dramatiq.broker
import pytest
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware

from worker import broker as broker_mod


@pytest.fixture
def broker(redis_url: str, namespace: str) -> Iterator[RedisBroker]:
    before = getattr(dramatiq.broker, "global_broker", None)
    redis_broker = RedisBroker(url=redis_url, namespace=namespace, middleware=[])
    dramatiq.set_broker(redis_broker)
    yield redis_broker
    dramatiq.broker.global_broker = before
    redis_broker.client.close()


def drain(broker: RedisBroker, queue: str, expected: int) -> list[MessageProxy]:
    consumer = broker.consume(queue, prefetch=expected, timeout=500)
    got = []
    for _ in range(expected * 4):
        message = next(consumer)
        if message is not None:
            got.append(message)
            consumer.ack(message)
        if len(got) == expected:
            break
    consumer.close()
    return got


def test_publish_many_sends_each_payload_in_order(broker):
    payloads = [{"event_id": f"evt_{i}", "status": "created"} for i in range(5)]
    broker_mod.publish_many("profile_outcomes", "profile_outcome", payloads)
    got = drain(broker, "profile_outcomes", 5)
    assert [m.args for m in got] == [(p,) for p in payloads]
    assert {m.actor_name for m in got} == {"profile_outcome"}
    assert len({m.options["redis_message_id"] for m in got}) == 5
    assert len({m.message_id for m in got}) == 5


def test_publish_many_queues_behind_and_before_what_enqueue_sends(broker):
    def one(event_id: str) -> dramatiq.Message:
        return dramatiq.Message(queue_name="profile_outcomes", actor_name="profile_outcome",
                                args=({"event_id": event_id},), kwargs={}, options={})

    broker.enqueue(one("evt_1"))
    broker_mod.publish_many("profile_outcomes", "profile_outcome",
                            [{"event_id": "evt_2"}, {"event_id": "evt_3"}])
    broker.enqueue(one("evt_4"))
    got = drain(broker, "profile_outcomes", 4)
    assert [m.args[0]["event_id"] for m in got] == ["evt_1", "evt_2", "evt_3", "evt_4"]
    namespace = broker.namespace
    assert broker.client.hlen(f"{namespace}:profile_outcomes.msgs") == 0  # acked: gone
    assert broker.client.llen(f"{namespace}:profile_outcomes") == 0


class Recording(Middleware):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def before_enqueue(self, broker, message, delay):
        self.seen.append(f"before {message.args[0]['event_id']}")

    def after_enqueue(self, broker, message, delay):
        self.seen.append(f"after {message.args[0]['event_id']}")


def test_publish_many_runs_the_enqueue_hooks_of_middleware_that_has_them(broker):
    recording = Recording()
    broker.add_middleware(recording)
    broker_mod.publish_many("profile_outcomes", "profile_outcome",
                            [{"event_id": "evt_a"}, {"event_id": "evt_b"}])
    assert recording.seen == ["before evt_a", "before evt_b", "after evt_a", "after evt_b"]
    assert len(drain(broker, "profile_outcomes", 2)) == 2
