"""Prometheus counters of casecredits, shared by the web and worker processes.

Each process counts what it decides: the web process its HTTP requests and the
webhook events it stores (``received``, or ``invalid`` for an unusable lead),
the worker the outcome of every event it processes, the charges and the
refusals. ``GET /metrics`` shows the web process's; a worker's are shown with
dramatiq's own metrics by its exposition server (``WORKER_METRICS=1``, port
9191) in the same scrape format.

``prometheus_client`` is imported on first use, not at import time: it decides
once, when imported, whether to write values to files shared between
processes, and dramatiq's middleware turns that on only after a worker process
has booted. Counting before then would keep a worker's values where its
exposition server cannot see them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from schemas.common import Status

if TYPE_CHECKING:
    from db.intake import Outcome


@dataclass(frozen=True, slots=True)
class _Counters:
    events: Any
    charges: Any
    refusals: Any
    http_requests: Any


_lock = threading.Lock()


def _counters() -> _Counters:
    """The counters, created once per process even when threads race to first use."""
    with _lock:
        return _make_counters()


@lru_cache(maxsize=1)
def _make_counters() -> _Counters:
    from prometheus_client import Counter

    return _Counters(
        events=Counter("casecredits_events", "Events by channel and status (outcome).",
                       ["channel", "status"]),
        charges=Counter("casecredits_charges", "Credits charged for profiles, by bucket.",
                        ["bucket"]),
        refusals=Counter("casecredits_refusals", "Manual creations refused, by reason.",
                         ["reason"]),
        http_requests=Counter("casecredits_http_requests",
                              "HTTP requests by method, route template and status.",
                              ["method", "route", "status"]),
    )


@lru_cache(maxsize=1024)
def _child(name: str, *values: str) -> Any:
    """The counter ``name`` for these label values (``labels()`` costs ~4 us a call)."""
    return getattr(_counters(), name).labels(*values)


def count_event(channel: str, status: str) -> None:
    """One event reached ``status`` on ``channel``."""
    _child("events", channel, status).inc()


def count_outcome(outcome: Outcome) -> None:
    """Count an event's outcome, its charge and its refusal (the worker's side)."""
    _child("events", outcome.source, outcome.status.value).inc()
    if outcome.charged_bucket is not None:
        _child("charges", outcome.charged_bucket.value).inc()
    if outcome.status is Status.refused:
        _child("refusals", outcome.reason or "unknown").inc()


def count_request(method: str, route: str, status: int) -> None:
    _child("http_requests", method, route, str(status)).inc()


def exposition() -> tuple[bytes, str]:
    """This process's metrics in the Prometheus text format, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    _counters()
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
