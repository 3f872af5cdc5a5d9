"""``POST /v1/hooks/{source_id}``: leads from website forms and funnel tools.

The checks run in this order, each refusal creating nothing: the source exists
(404), the body is within 64 KiB (413), the credentials are this source's
(401), the source is enabled (410), the body is JSON or a form (415). Then the
event is stored and committed, as ``received`` with its mapped lead, or as
``invalid`` with its errors (422; the raw body is kept), and only then answered.

A webhook-id the source sent before is answered as the first time, with the
same event id (200 instead of 202, or 422 again for an invalid one), and
nothing is stored; with another body than the first it answers 409, so that a
new lead sent under a reused id is refused rather than silently dropped.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api import auth, body, inbox
from api.errors import ApiError, responses
from schemas.common import Status
from schemas.http import HookAccepted
from schemas.leads import LeadProfile, UnusableLead, lead_from_body
from worker import metrics, runtime
from worker.logs import get_logger

log = get_logger(__name__)
router = APIRouter(tags=["hooks"])

#: what a source id may look like before the database is asked
_SOURCE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

#: the canonical fields; any spelling in schemas.leads maps too, and a value may be text,
#: a number, a list or an object (``{"first": ..., "last": ...}``): content decides (422)
_LEAD_FIELDS: dict[str, Any] = {
    "first_name": {"description": "also firstName, fname, first, given_name, ..."},
    "last_name": {"description": "also lastName, lname, last, surname, ..."},
    "full_name": {"description": "also name; split into first and last name"},
    "email": {"description": "also Email, email_address, e-mail, ...; validated"},
    "phone": {"description": "also Phone, phone_number, mobile, tel, ...; E.164 where valid"},
    "date_of_birth": {"description": "also dob, birthdate; YYYY-MM-DD or MM/DD/YYYY"},
    "state": {"description": "also province"},
}
_FORM_FIELDS = {name: {"type": "string", **spec} for name, spec in _LEAD_FIELDS.items()}
REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "description": (
        "A lead as a form or funnel tool sends it, up to 64 KiB. Common spellings of "
        "the fields (`firstName`, `fname`, `Email`, `phone_number`, `contact[email]`, "
        "...) are mapped onto the profile, other fields are kept as `extra`; a lead needs "
        "a name, an email or a phone. Fields such as `source` never decide the channel: "
        "the source in the URL does."),
    "content": {
        body.JSON: {"schema": {"type": "object", "properties": _LEAD_FIELDS,
                               "additionalProperties": True},
                    "example": {"firstName": "Ada", "lastName": "Lovelace",
                                "email": "ada@example.com", "phone": "+1 415 555 2671"}},
        body.FORM: {"schema": {"type": "object", "properties": _FORM_FIELDS,
                               "additionalProperties": {"type": "string"}}},
    },
}


@router.post(
    "/v1/hooks/{source_id}", status_code=202, response_model=HookAccepted,
    summary="Receive a lead from a website form or funnel tool",
    dependencies=[Depends(auth.hook_credentials)],
    responses={200: {"model": HookAccepted,
                     "description": "A webhook-id this source sent before: the same event, "
                                    "nothing created"},
               **responses(400, 401, 404, 409, 410, 413, 415, 422, 503)},
    openapi_extra={"requestBody": REQUEST_BODY},
)
async def receive_lead(
    request: Request,
    source_id: Annotated[str, Path(description="The id `casecredits source add` printed.")],
    webhook_id: Annotated[str | None, Header(
        alias="webhook-id", description="The sender's id of this webhook, its idempotency "
        "key; required with a signature, generated when absent with a bearer token.",
        json_schema_extra={"pattern": auth.WEBHOOK_ID.pattern, "minLength": 1,
                           "maxLength": 128})] = None,
    webhook_timestamp: Annotated[str | None, Header(
        alias="webhook-timestamp", description="Unix seconds of signing; within 5 minutes "
                                               "of now.")] = None,
) -> JSONResponse:
    # the webhook headers are declared for the OpenAPI document; auth reads them itself
    source = await run_in_threadpool(inbox.find_source, source_id) \
        if _SOURCE_ID.match(source_id) else None
    if source is None:
        raise _refused(ApiError(404, "unknown_source", "no source with this id"), source_id)
    try:
        raw = await body.read_limited(request)
        event_key = auth.authenticate(source, body=raw, headers=request.headers,
                                      now=runtime.now())
        if not source.enabled:
            raise ApiError(410, "source_disabled", "this source is disabled; it takes no leads")
        content_type = request.headers.get("content-type", "")
        kind = body.media_type(content_type)
    except ApiError as exc:
        raise _refused(exc, source_id) from None
    lead: LeadProfile | None = None
    errors: list[dict[str, Any]] | None = None
    try:
        lead = lead_from_body(body.parse(raw, kind))
    except UnusableLead as exc:
        errors = exc.errors
    stored = await run_in_threadpool(inbox.store, source, webhook_id=event_key,
                                     raw_body=body.raw_text(raw), content_type=content_type,
                                     lead=lead, errors=errors)
    if inbox.needs_sending(stored):
        await run_in_threadpool(request.app.state.producer.send_ingest, stored.event_id)
    fields = {"source_id": source.id, "account_id": source.account_id,
              "channel": source.kind, "event_id": stored.event_id}
    if not stored.new:
        return _resent(stored, fields)
    metrics.count_event(source.kind, stored.status)
    if lead is None:
        log.info("hook.invalid", **fields, errors=len(errors or ()),
                 locs=[".".join(str(p) for p in e["loc"]) for e in errors or ()])
        raise ApiError(422, "invalid_lead", "the body does not make a lead; it is kept as an "
                       "invalid event", event_id=stored.event_id, errors=errors)
    log.info("hook.accepted", **fields)
    return JSONResponse(HookAccepted(event_id=stored.event_id, status="accepted").model_dump(),
                        status_code=202)


def _resent(stored: inbox.Stored, fields: dict[str, str]) -> JSONResponse:
    """A webhook-id this source used before: the first answer again, or 409 for another body."""
    if not stored.same_body:
        log.info("hook.webhook_id_reused", **fields)
        raise ApiError(409, "webhook_id_reused", "this webhook-id came before with another "
                       "body; send a new lead with a new webhook-id", event_id=stored.event_id)
    log.info("hook.duplicate", **fields)
    if stored.status == Status.invalid.value:
        raise ApiError(422, "invalid_lead", "the body does not make a lead; it was kept as an "
                       "invalid event when first sent", event_id=stored.event_id,
                       errors=stored.errors)
    return JSONResponse(HookAccepted(event_id=stored.event_id, status="duplicate").model_dump(),
                        status_code=200)


def _refused(exc: ApiError, source_id: str) -> ApiError:
    log.info("hook.refused", source_id=source_id[:80], status=exc.status, error=exc.error)
    return exc
