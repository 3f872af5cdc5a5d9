"""What the HTTP API answers, beyond the views it shares with the CLI, and the source views."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class HookAccepted(BaseModel):
    """``202``: the event is stored and handed to the worker; ``200``: seen before."""

    model_config = ConfigDict(json_schema_extra={
        "examples": [{"event_id": "evt_0f8e1c...", "status": "accepted"}]})

    event_id: str
    #: ``accepted`` for a new event (202), ``duplicate`` for a known webhook-id (200)
    status: Literal["accepted", "duplicate"]


class FieldError(BaseModel):
    """One reason a lead or a request was refused; never the value that was sent."""

    loc: list[str | int]
    msg: str
    type: str
    #: the sender's own key the error is about, when it differs from ``loc``
    field: str | None = None


class ErrorBody(BaseModel):
    """Every error answer: a stable code, a sentence, and details where they help."""

    error: str = Field(description="a stable code: unauthorized, unknown_source, "
                                   "source_disabled, body_too_large, unsupported_media_type, "
                                   "invalid_lead, invalid_request, not_found, unavailable, ...")
    message: str
    #: the event an ``invalid_lead`` was kept as
    event_id: str | None = None
    errors: list[FieldError] | None = None


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    """``200`` when the database and the broker both answer, else ``503``."""

    status: Literal["ready", "unavailable"]
    database: Literal["ok", "unavailable"]
    broker: Literal["ok", "unavailable"]


class SourceView(BaseModel):
    """A registered lead source, without its credentials (``source list --json``)."""

    source_id: str
    account_id: str
    kind: str
    name: str
    enabled: bool
    created_at: datetime
    #: until when the secret before the last rotation still verifies
    previous_secret_expires_at: datetime | None


class SourceCredentials(BaseModel):
    """Shown once, by ``source add`` and ``source rotate``: keep them now."""

    source_id: str
    kind: str
    secret: str
    #: the bearer token; on ``rotate`` only with ``--token``
    token: str | None = None
    previous_secret_expires_at: datetime | None = None
