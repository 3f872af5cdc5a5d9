"""The batcher that groups the web's blocking writes: every item submitted is run, whatever
the moment it comes in; batches form while others run, never more at once than allowed."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from api.batching import Batcher

pytestmark = pytest.mark.timeout(30)


def echo(items: Sequence[int]) -> list[int]:
    return list(items)


def test_an_item_submitted_as_the_last_batch_ends_still_runs() -> None:
    """The first result wakes its request in the step where the drainer stops, before
    the drainer's task is done: a submit from that request found it still counted once,
    and its item waited with no one to run it (until another request came)."""
    batcher = Batcher(echo, name="test")

    async def one_after_another() -> list[int]:
        return [await batcher.submit(i) for i in range(5)]

    async def main() -> list[int]:
        return await asyncio.wait_for(one_after_another(), timeout=5)

    try:
        assert asyncio.run(main()) == [0, 1, 2, 3, 4]
    finally:
        batcher.close()


def test_items_that_come_during_a_batch_make_the_next_one() -> None:
    started, release = threading.Event(), threading.Event()
    batches: list[list[int]] = []

    def run(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        if len(batches) == 1:
            started.set()
            release.wait(5)
        return [i * 10 for i in items]

    batcher = Batcher(run, name="test", concurrency=1)

    async def main() -> list[int]:
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in (2, 3, 4)]
        await asyncio.sleep(0.05)  # they wait: the one batch allowed is running
        assert batches == [[1]]
        release.set()
        return [await first, *[await r for r in rest]]

    try:
        assert asyncio.run(main()) == [10, 20, 30, 40]
    finally:
        batcher.close()
    assert batches == [[1], [2, 3, 4]]


def test_no_more_batches_run_at_once_than_allowed() -> None:
    running = 0
    most = 0
    lock = threading.Lock()

    def run(items: Sequence[int]) -> list[int]:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        threading.Event().wait(0.01)
        with lock:
            running -= 1
        return list(items)

    batcher = Batcher(run, name="test", max_batch=3, concurrency=2)

    async def main() -> list[int]:
        async def client(n: int) -> list[int]:  # each waits for its answer, then sends again
            return [await batcher.submit(n * 100 + i) for i in range(20)]
        return [x for xs in await asyncio.wait_for(
            asyncio.gather(*(client(n) for n in range(8))), timeout=20) for x in xs]

    try:
        done = asyncio.run(main())
    finally:
        batcher.close()
    assert sorted(done) == sorted(n * 100 + i for n in range(8) for i in range(20))
    assert most == 2


def test_an_error_result_fails_its_item_alone_and_a_raising_batch_fails_all() -> None:
    def run(items: Sequence[int]) -> list[int | BaseException]:
        if 0 in items:
            raise RuntimeError("the whole batch")
        return [ValueError(i) if i % 2 else i for i in items]

    batcher = Batcher(run, name="test", concurrency=1)

    async def main() -> list[object]:
        return await asyncio.gather(*(batcher.submit(i) for i in (2, 3, 4)),
                                    return_exceptions=True)

    async def failing() -> list[object]:
        return await asyncio.gather(*(batcher.submit(i) for i in (0, 2)),
                                    return_exceptions=True)

    try:
        two, three, four = asyncio.run(main())
        zero, two_again = asyncio.run(failing())
    finally:
        batcher.close()
    assert (two, four) == (2, 4) and isinstance(three, ValueError)
    assert isinstance(zero, RuntimeError) and isinstance(two_again, RuntimeError)
