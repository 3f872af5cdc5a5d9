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

This is the hot path, so :class:`FastPath` hands these requests to
:func:`receive` before routing, the webhooks of concurrent requests are stored
together (:class:`api.inbox.Inbox`: one transaction, one commit, one Redis
round trip), and a source is remembered between requests to check a webhook
early, but never trusted for the write (see :class:`api.inbox.Inbox`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from api import auth, body, inbox
from api.errors import RETRY_AFTER_S, ApiError, answer, responses
from db.lead_inbox import SourceRow
from schemas.common import Status
from schemas.http import HookAccepted
from schemas.leads import LeadProfile, UnusableLead, lead_from_body
from worker import logs, metrics, runtime
from worker.logs import get_logger

log = get_logger(__name__)
router = APIRouter(tags=["hooks"])

#: what a source id may look like before the database is asked
_SOURCE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: times a webhook is checked and stored at most: against the remembered source,
#: then the database's, and once more if that changed again before the write
_CHECKS = 3

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
) -> Response:
    # declared for the OpenAPI document (no docstring: it would become its description);
    # FastPath calls receive() before routing, and auth reads the webhook headers itself
    return await receive(request)


async def receive(request: Request) -> Response:
    """Check, store, and answer a webhook (see the module's docstring for the order)."""
    source_id: str = request.path_params["source_id"]
    hooks: inbox.Inbox = request.app.state.inbox
    source, fresh = await hooks.find_source(source_id) if _SOURCE_ID.match(source_id) \
        else (None, True)
    if source is None:
        raise _refused(ApiError(404, "unknown_source", "no source with this id"), source_id)
    try:
        raw = await body.read_limited(request)
    except ApiError as exc:
        raise _refused(exc, source_id) from None
    source, incoming, stored = await _check_and_store(hooks, source, fresh, raw, request.headers)
    fields = {"source_id": source.id, "account_id": source.account_id,
              "channel": source.kind, "event_id": stored.event_id}
    if not stored.new:
        return _resent(stored, fields)
    metrics.count_event(source.kind, stored.status)
    if incoming.lead is None:
        errors = incoming.errors or []
        log.info("hook.invalid", **fields, errors=len(errors),
                 locs=[".".join(str(p) for p in e["loc"]) for e in errors])
        raise ApiError(422, "invalid_lead", "the body does not make a lead; it is kept as an "
                       "invalid event", event_id=stored.event_id, errors=errors)
    # accepted webhooks are logged a batch at a time, by Inbox.store_all ("inbox.committed")
    # HookAccepted(event_id=..., status="accepted"), written out: event ids are "evt_<hex>"
    return Response(b'{"event_id":"%s","status":"accepted"}' % stored.event_id.encode(),
                    status_code=202, media_type="application/json")


async def _check_and_store(hooks: inbox.Inbox, source: SourceRow, fresh: bool, raw: bytes,
                           headers: Headers) -> tuple[SourceRow, inbox.Incoming, inbox.Stored]:
    """Check the webhook against ``source`` and store it; against the database's
    source again when a remembered one refuses it or changed before the write.

    :raises ApiError: the refusal of the source as the database has it.
    """
    for _ in range(_CHECKS):
        try:
            incoming = _admit(source, raw, headers)
        except ApiError as exc:
            if fresh:
                raise _refused(exc, source.id) from None
        else:
            try:
                return source, incoming, await hooks.store(incoming)
            except inbox.SourceChanged:
                pass
        found, fresh = await hooks.find_source(source.id, fresh=True)
        if found is None:
            raise _refused(ApiError(404, "unknown_source", "no source with this id"), source.id)
        source = found
    log.warning("hook.source_unsettled", source_id=source.id)
    raise ApiError(503, "unavailable", "the source changed while the webhook was stored; "
                   "retry later", headers={"Retry-After": str(RETRY_AFTER_S)})


def _admit(source: SourceRow, raw: bytes, headers: Headers) -> inbox.Incoming:
    """Authenticate the webhook, check its source and content type, and map its lead.

    :raises ApiError: 401 or 400 (credentials), 410 (disabled source), 415.
    """
    event_key = auth.authenticate(source, body=raw, headers=headers, now=runtime.now())
    if not source.enabled:
        raise ApiError(410, "source_disabled", "this source is disabled; it takes no leads")
    content_type = headers.get("content-type", "")
    kind = body.media_type(content_type)
    lead: LeadProfile | None = None
    errors: list[dict[str, Any]] | None = None
    try:
        lead = lead_from_body(body.parse(raw, kind), phone_as_sent=True)
    except UnusableLead as exc:
        errors = exc.errors
    return inbox.Incoming(source, webhook_id=event_key, raw_body=body.raw_text(raw),
                          content_type=content_type[:200], lead=lead, errors=errors)


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
    # the id as the URL had it: anything a sender typed there
    log.info("hook.refused", source_id=logs.scrub(source_id[:80]), status=exc.status,
             error=exc.error)
    return exc


#: the path of the hook, as the router would match it
_HOOK_PATH = re.compile(r"^/v1/hooks/([^/]+)$")


class FastPath:
    """ASGI middleware: ``POST /v1/hooks/{source_id}`` goes straight to :func:`receive`.

    The hook is the hot path; this skips routing and FastAPI's per-route work
    (dependencies, exception middleware), which cost as much as the rest of a
    request. The declared route stays for the OpenAPI document and for other
    methods (405). Errors are answered as the app's handlers answer them; any
    other exception propagates to the server-error handler (500). The request
    is counted under the route's template, by :class:`api.health.CountRequests`
    around it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.route = next(r for r in router.routes if getattr(r, "name", "") == "receive_lead")

    async def __call__(self, scope: Scope, receive_: Receive, send: Send) -> None:
        found = _HOOK_PATH.match(scope["path"]) if scope["type"] == "http" \
            and scope["method"] == "POST" else None
        if found is None:
            await self.app(scope, receive_, send)
            return
        scope["route"] = self.route
        scope["path_params"] = {"source_id": found.group(1)}
        request = Request(scope, receive_, send)
        try:
            response = await receive(request)
        except Exception as exc:
            handled = answer(exc)
            if handled is None:
                raise
            response = handled
        await response(scope, receive_, send)
