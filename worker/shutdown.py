"""Graceful shutdown of worker processes: finish or give back every message held.

The Procfile's ``worker`` line names this module after the broker module
(``dramatiq worker.actors worker.shutdown ...``), so dramatiq imports it in each
worker process once its own signal handlers are in place. On SIGTERM dramatiq
stops taking new work, lets the messages in progress finish (for at most
``--worker-shutdown-timeout``), and puts the ones waiting in memory back on
their queues. Two gaps remain, and this module closes them:

* A platform that stops a process group (``kill -TERM -PGID``, as Heroku and
  ``casecredits dev`` do) signals the worker processes directly *and* through
  dramatiq's main process, which forwards what it gets. dramatiq takes a second
  SIGTERM as "kill now" and exits mid-shutdown. Here a repeat within
  :data:`REPEAT_WINDOW_S` of the first counts as the same request (the first
  may have come while the process was still booting); a later one still kills.
* A Redis consumer fetches up to its prefetch at once and hands the messages out
  one by one; when it stops between the two, the rest stay fetched in Redis
  until the worker's heartbeat goes stale. :class:`GiveBackPrefetched` puts them
  back on their queue at once.

A message cut off anyway (a SIGKILL, or the shutdown timeout) is not lost: it
stays in the dead worker's ack set and is delivered again once its heartbeat is
older than ``HEARTBEAT_TIMEOUT_MS``. Each message is one transaction, so nothing
is half-written.
"""

from __future__ import annotations

import signal
import time
from types import FrameType
from typing import Any

import dramatiq
from dramatiq.message import Message
from dramatiq.middleware import Middleware

from worker.logs import get_logger

log = get_logger(__name__)

#: seconds within which a second SIGTERM is taken as the same request to stop
REPEAT_WINDOW_S = 2.0


class GiveBackPrefetched(Middleware):
    """When a consumer stops, requeue the messages it fetched but never handed out."""

    def before_consumer_thread_shutdown(self, broker: Any, thread: Any) -> None:
        consumer = getattr(thread, "consumer", None)
        cache = getattr(consumer, "message_cache", None)
        if consumer is None or not cache:
            return
        messages = [Message.decode(data) for data in cache if data is not None]
        consumer.message_cache = []
        try:
            consumer.requeue(messages)
        except Exception as exc:  # Redis gone: the heartbeat timeout brings them back
            log.warning("shutdown.requeue_failed", queue=thread.queue_name,
                        messages=len(messages), error=type(exc).__name__)
            return
        log.info("shutdown.prefetched_requeued", queue=thread.queue_name,
                 messages=len(messages))


def _dramatiq_handler() -> Any:
    """dramatiq's SIGTERM handler when this is one of its worker processes, else None."""
    handler = signal.getsignal(signal.SIGTERM)
    if callable(handler) and getattr(handler, "__qualname__", "").startswith("worker_process."):
        return handler
    return None


def _already_stopping(handler: Any) -> bool:
    """Whether dramatiq's handler has had a SIGTERM already (its ``running`` flag is off):
    one that came while this process was still importing the actors, before this module."""
    try:
        cell = handler.__closure__[handler.__code__.co_freevars.index("running")]
    except (AttributeError, ValueError, TypeError, IndexError):
        return False
    return cell.cell_contents is False


def _collapse_repeats(handler: Any) -> None:
    """Wrap dramatiq's SIGTERM handler so that a quick repeat does not kill the process.

    A SIGTERM that dramatiq's own handler took before this wrapper was in place (the
    group was stopped while the process was booting) counts as the first: without
    that, the main process's forwarded copy, a moment later, killed the worker
    mid-shutdown, with messages in its threads' hands.
    """
    first: list[float] = [time.monotonic()] if _already_stopping(handler) else []

    def once(signum: int, frame: FrameType | None) -> Any:
        now = time.monotonic()
        if first and now - first[0] < REPEAT_WINDOW_S:
            return None
        first.append(now)
        return handler(signum, frame)

    signal.signal(signal.SIGTERM, once)


def install() -> bool:
    """In a dramatiq worker process: add the middleware, collapse repeated SIGTERMs.

    :returns: False, doing nothing, anywhere else.
    """
    handler = _dramatiq_handler()
    if handler is None:
        return False
    broker = dramatiq.get_broker()
    if not any(isinstance(m, GiveBackPrefetched) for m in broker.middleware):
        broker.add_middleware(GiveBackPrefetched())
    _collapse_repeats(handler)
    return True


install()
