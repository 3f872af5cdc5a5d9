"""worker.shutdown: a repeated SIGTERM is the same request to stop, also when the first
came before the module wrapped dramatiq's handler (the process was still booting)."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from worker import shutdown


def worker_process() -> tuple[Callable[[int, Any], None], list[str]]:
    """A handler of the shape of dramatiq's: the first SIGTERM stops, the next kills."""
    running = True
    calls: list[str] = []

    def termhandler(signum: int, frame: Any) -> None:
        nonlocal running
        calls.append("stop" if running else "kill")
        running = False

    return termhandler, calls


@pytest.fixture
def restore_sigterm() -> Iterator[None]:
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


def deliver() -> None:
    """What a SIGTERM would run now (called, not sent: the test process keeps running)."""
    installed = signal.getsignal(signal.SIGTERM)
    assert callable(installed)
    installed(signal.SIGTERM, None)


def test_a_quick_repeat_is_the_same_request(restore_sigterm):
    handler, calls = worker_process()
    shutdown._collapse_repeats(handler)
    deliver()
    deliver()
    assert calls == ["stop"]


def test_a_sigterm_taken_while_booting_counts_as_the_first(restore_sigterm):
    handler, calls = worker_process()
    handler(signal.SIGTERM, None)  # dramatiq's own handler, before worker.shutdown is imported
    shutdown._collapse_repeats(handler)
    deliver()  # the copy dramatiq's main process forwards
    assert calls == ["stop"]


def test_a_later_repeat_still_kills(restore_sigterm, monkeypatch):
    handler, calls = worker_process()
    shutdown._collapse_repeats(handler)
    deliver()
    later = shutdown.time.monotonic() + shutdown.REPEAT_WINDOW_S + 1
    monkeypatch.setattr(shutdown.time, "monotonic", lambda: later)
    deliver()
    assert calls == ["stop", "kill"]
