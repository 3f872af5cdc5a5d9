"""The ASGI application: ``uvicorn api.app:create_app --factory`` (the Procfile's ``web``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import errors, health, hooks, inbox, reads
from worker import logs
from worker.settings import Settings, get_settings

DESCRIPTION = """\
Leads from agents' website forms and funnel tools come in on `POST /v1/hooks/{source_id}`
and become client profiles that cost no credit. The main application reads credits, the
ledger, event outcomes and profiles with the bearer `INTERNAL_API_TOKEN`. Every error is
JSON: `{"error": <code>, "message": <sentence>}`.
"""


class ConfigurationError(RuntimeError):
    """The service refuses to start as configured."""


def check(settings: Settings) -> None:
    """:raises ConfigurationError: in production without an ``INTERNAL_API_TOKEN``."""
    token = settings.internal_api_token
    if settings.environment == "production" and (
            token is None or not token.get_secret_value().strip()):
        raise ConfigurationError(
            "INTERNAL_API_TOKEN must be set when ENVIRONMENT=production; refusing to start")


def create_app() -> FastAPI:
    """Build the app from the settings in the environment.

    :raises ConfigurationError: when the settings are not fit to serve.
    """
    settings = get_settings()
    check(settings)
    logs.configure(fmt=settings.log_format, level=settings.log_level)
    for name in ("uvicorn", "uvicorn.error"):  # uvicorn's lines through our redacting handler
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    producer = inbox.Producer(settings)
    hooks_inbox = inbox.Inbox(producer)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        hooks_inbox.close()
        producer.close()

    app = FastAPI(title="casecredits", version="0.1.0", description=DESCRIPTION,
                  lifespan=lifespan)
    app.state.producer = producer
    app.state.inbox = hooks_inbox
    errors.install(app)
    app.add_middleware(hooks.FastPath)
    app.add_middleware(health.CountRequests)  # added last: around FastPath, so it counts it
    app.include_router(hooks.router)
    app.include_router(reads.router)
    app.include_router(health.router)
    return app
