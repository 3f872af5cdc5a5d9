"""Group the blocking work of concurrent requests into one call on a worker thread.

A request hands its item to a :class:`Batcher` and awaits its own result. The
first item to arrive starts a batch at once (no waiting for company); the items
that arrive while batches run make up the next one, which starts as soon as
fewer than ``concurrency`` batches run. So under no load each request is served
alone and as fast as before, and under load a whole batch costs one thread hop,
one round trip and one commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: items one batch takes at most; the rest wait for the next
MAX_BATCH = 64


class Batcher(Generic[T, R]):
    """Runs ``run`` on a worker thread for the items waiting, ``concurrency`` batches at
    a time at most (two let one batch's round trips overlap the next one's).

    ``run`` gets the items in arrival order and returns one result per item, in
    the same order; a result that is an exception is raised to that item's
    request alone. If ``run`` itself raises, every request of the batch gets the
    exception.
    """

    def __init__(self, run: Callable[[Sequence[T]], Sequence[R | BaseException]], *,
                 name: str, max_batch: int = MAX_BATCH, concurrency: int = 1) -> None:
        self._run = run
        self._max_batch = max_batch
        self._concurrency = concurrency
        #: batches run on threads of their own (not the shared thread pool)
        self._thread = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=name)
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        #: the drain tasks, kept referenced until done
        self._drainers: set[asyncio.Task[None]] = set()
        #: drainers still in their loop. Counted here, not by ``len(self._drainers)``: a
        #: drainer leaves that set only in a done callback, one loop step after it stopped
        #: taking items, and an item submitted in between would wait with no one to run it
        self._draining = 0

    async def submit(self, item: T) -> R:
        """Wait for ``item``'s result.

        :raises BaseException: what ``run`` raised for the batch or returned for the item.
        """
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._draining < self._concurrency:
            self._draining += 1
            drainer = asyncio.ensure_future(self._drain())
            self._drainers.add(drainer)
            drainer.add_done_callback(self._drainers.discard)
        return await future

    async def _drain(self) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self._waiting:
                batch = self._waiting[:self._max_batch]
                del self._waiting[:self._max_batch]
                try:
                    results = await asyncio.get_running_loop().run_in_executor(
                        self._thread, self._run, [item for item, _ in batch])
                except Exception as exc:  # the batch failed as a whole: each request says so
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():  # its request went away; its work is done anyway
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        except BaseException:  # cancelled (the server stops): no request waits for ever
            for _, future in [*batch, *self._waiting]:
                future.cancel()
            self._waiting.clear()
            raise
        finally:  # in the same step as the last look at ``_waiting``: nothing comes between
            self._draining -= 1

    def close(self) -> None:
        """Let the batch threads go once their batches are done (the app stops)."""
        self._thread.shutdown(wait=False)
