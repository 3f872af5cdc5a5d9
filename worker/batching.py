"""Group commit: the worker threads of a process share transactions under load.

Each of a worker process's threads handles one message at a time. Alone, each
would open a transaction, run its statement, commit and publish its outcome:
round trips and CPU spent per message. :class:`GroupCommit` lets the calls
that arrive together run as one batch instead: one transaction, one commit,
then every caller returns with its own result.

There is no waiting for a batch to fill. The first caller runs at once with
what is queued (often only itself); the callers that arrive while it runs queue
up and form the next batch, which one of them runs as soon as the first is
done. Under no load a call runs alone, as it would without this; under load
the batches grow to the number of busy threads, so that the cost of a
transaction is shared by up to ``max_size`` messages.

A batch that raises is run again one item at a time, so that one bad item
fails alone and the others still get their results. That is safe only for
work that is idempotent per item, as a manual creation is (a message that was
recorded returns its first outcome).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Slot(Generic[T, R]):
    __slots__ = ("done", "error", "finished", "item", "lead", "result")

    def __init__(self, item: T) -> None:
        self.item = item
        #: held until the slot is done: a plain lock is cheaper to wait on than an Event
        self.done = threading.Lock()
        self.done.acquire()
        self.lead = False  # set before ``done`` is released: this caller runs the next batch
        self.result: R | None = None
        self.error: BaseException | None = None
        self.finished = False  # a result or an error is set

    def outcome(self) -> R:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]  # set with ``done``


class GroupCommit(Generic[T, R]):
    """Run ``run(items)`` for the items of concurrent :meth:`submit` calls together.

    ``run`` must return one result per item, in order. Each caller gets its
    own result, or the exception its item raised when run alone.
    """

    def __init__(self, run: Callable[[Sequence[T]], Sequence[R]], *, max_size: int) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._run = run
        self._max_size = max_size
        self._lock = threading.Lock()
        self._queue: list[_Slot[T, R]] = []
        #: a caller is running a batch; the queued ones wait for it
        self._busy = False
        #: sizes of the batches run, for tests and metrics: (batches, items)
        self.batches = 0
        self.items = 0

    def submit(self, item: T) -> R:
        slot: _Slot[T, R] = _Slot(item)
        with self._lock:
            self._queue.append(slot)
            lead = not self._busy
            self._busy = True
        if not lead:
            slot.done.acquire()
            if not slot.lead:
                return slot.outcome()
        with self._lock:
            batch = self._queue[:self._max_size]
            del self._queue[:self._max_size]
        try:
            self._run_batch(batch)
        finally:
            self._hand_over(batch)
        return slot.outcome()

    def _run_batch(self, batch: list[_Slot[T, R]]) -> None:
        self.batches += 1
        self.items += len(batch)
        try:
            results = self._run([s.item for s in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} gave {len(results)} results")
        except Exception:
            if len(batch) == 1:
                raise
            for slot in batch:  # alone, so that one bad item fails by itself
                try:
                    slot.result = self._run([slot.item])[0]
                except Exception as exc:
                    slot.error = exc
                slot.finished = True
            return
        for slot, result in zip(batch, results, strict=True):
            slot.result, slot.finished = result, True

    def _hand_over(self, batch: list[_Slot[T, R]]) -> None:
        """Wake the batch's callers, and make the first queued caller run the next one."""
        for slot in batch:
            if not slot.finished:  # the run was interrupted (an exception in this thread)
                slot.error = RuntimeError("the batch this message was in did not finish")
                slot.finished = True
            if slot.done.locked():
                slot.done.release()
        with self._lock:
            if self._queue:
                head = self._queue[0]
                head.lead = True
                head.done.release()
            else:
                self._busy = False
