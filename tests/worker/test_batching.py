"""The group commit of worker threads (worker/batching.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from worker.batching import GroupCommit


class Recorder:
    """A batch runner that doubles numbers, slowly, and fails on 13."""

    def __init__(self, delay: float = 0.02) -> None:
        self.delay = delay
        self.batches: list[list[int]] = []
        self.lock = threading.Lock()

    def __call__(self, items: Sequence[int]) -> list[int]:
        with self.lock:
            self.batches.append(list(items))
        time.sleep(self.delay)
        if 13 in items:
            raise ValueError("thirteen")
        return [2 * i for i in items]


def submit_all(group: GroupCommit[int, int], numbers: list[int]) -> dict[int, object]:
    results: dict[int, object] = {}
    barrier = threading.Barrier(len(numbers))

    def call(n: int) -> None:
        barrier.wait()
        try:
            results[n] = group.submit(n)
        except Exception as exc:
            results[n] = exc

    threads = [threading.Thread(target=call, args=(n,)) for n in numbers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    return results


def test_a_lone_call_runs_at_once_by_itself():
    run = Recorder(delay=0)
    group = GroupCommit(run, max_size=8)
    assert group.submit(4) == 8
    assert run.batches == [[4]]


def test_concurrent_calls_share_batches_and_each_gets_its_own_result():
    run = Recorder()
    group = GroupCommit(run, max_size=8)
    results = submit_all(group, list(range(1, 13)))
    assert results == {n: 2 * n for n in range(1, 13)}
    assert sorted(n for b in run.batches for n in b) == list(range(1, 13))
    assert len(run.batches) < 12  # the calls that waited went together
    assert max(len(b) for b in run.batches) <= 8


def test_the_batch_size_is_capped():
    run = Recorder()
    group = GroupCommit(run, max_size=3)
    results = submit_all(group, list(range(1, 11)))
    assert results == {n: 2 * n for n in range(1, 11)}
    assert max(len(b) for b in run.batches) <= 3


def test_a_failing_item_fails_alone():
    run = Recorder()
    group = GroupCommit(run, max_size=16)
    results = submit_all(group, [11, 12, 13, 14, 15])
    assert isinstance(results[13], ValueError)
    assert {n: r for n, r in results.items() if n != 13} == {11: 22, 12: 24, 14: 28, 15: 30}
    assert [13] in run.batches  # run again by itself


def test_a_lone_failure_raises_in_its_caller_and_the_next_call_still_runs():
    group = GroupCommit(Recorder(delay=0), max_size=4)
    with pytest.raises(ValueError, match="thirteen"):
        group.submit(13)
    assert group.submit(1) == 2


def test_a_result_per_item_is_required():
    group: GroupCommit[int, int] = GroupCommit(lambda items: [], max_size=4)
    with pytest.raises(RuntimeError, match="gave 0 results"):
        group.submit(1)


def test_max_size_must_be_positive():
    with pytest.raises(ValueError):
        GroupCommit(Recorder(), max_size=0)
