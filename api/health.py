"""``/healthz``, ``/readyz``, ``/metrics``, and the count of every request by route and status."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.http import Health, Readiness
from worker import metrics, runtime
from worker.logs import get_logger

log = get_logger(__name__)
router = APIRouter(tags=["health"])

#: seconds each dependency gets to answer a readiness check
READY_TIMEOUT_S = 3.0
#: methods counted by name; anything else is "other", to bound the labels
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


@router.get("/healthz", response_model=Health, summary="The process is up")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, summary="The database and the broker answer",
            responses={503: {"model": Readiness, "description": "Service Unavailable"}})
async def readyz(request: Request) -> JSONResponse:
    database = await _answers(_ping_database)
    broker = await _answers(request.app.state.producer.ping)
    ready = database and broker
    view = Readiness(status="ready" if ready else "unavailable",
                     database="ok" if database else "unavailable",
                     broker="ok" if broker else "unavailable")
    if not ready:
        log.warning("readiness.failed", database=view.database, broker=view.broker)
    return JSONResponse(view.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", response_class=PlainTextResponse,
            summary="Prometheus metrics of this process")
def metrics_endpoint() -> Response:
    payload, content_type = metrics.exposition()
    return Response(payload, media_type=content_type)


def _ping_database() -> bool:
    with runtime.engine().connect() as conn:
        conn.execute(text("SELECT 1"))
    return True


async def _answers(check: Callable[[], bool]) -> bool:
    try:
        return bool(await asyncio.wait_for(run_in_threadpool(check), READY_TIMEOUT_S))
    except Exception as exc:  # any failure, or no answer in time, is "not ready"
        log.warning("readiness.check_failed", error=type(exc).__name__)
        return False


class CountRequests:
    """ASGI middleware: count each request by method, route template and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in METHODS else "other"
            metrics.count_request(method, route, status)
