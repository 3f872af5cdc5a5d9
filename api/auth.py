"""Who may call: a source's signature or token on webhooks, the internal token on reads.

Every comparison of a secret is constant-time. A signature or a token is
checked against the one source named in the URL only, so that the credentials
of one source never open another, and a refusal says what was wrong with the
request without saying anything about other sources.
"""

from __future__ import annotations

import hmac
import re
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, cast

from fastapi import Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from api.errors import ApiError, unauthorized
from db import sources
from db.lead_inbox import SourceRow
from db.models import Source
from worker.settings import get_settings

#: what a webhook-id may be: visible ASCII, as Standard Webhooks senders make them
WEBHOOK_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")

internal_bearer = HTTPBearer(
    auto_error=False, scheme_name="internalToken",
    description="`Authorization: Bearer <INTERNAL_API_TOKEN>`, for the read endpoints.")
source_bearer = HTTPBearer(
    auto_error=False, scheme_name="sourceToken",
    description="`Authorization: Bearer <token>`: the token `casecredits source add` printed, "
                "for tools that cannot sign.")
source_signature = APIKeyHeader(
    name="webhook-signature", auto_error=False, scheme_name="standardWebhooks",
    description="A Standard Webhooks signature (`v1,<base64 HMAC-SHA256>`) made with the "
                "source's `whsec_` secret over `<webhook-id>.<webhook-timestamp>.<body>`, "
                "sent with `webhook-id` and `webhook-timestamp` (Unix seconds, within 5 "
                "minutes).")


def require_internal_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None,
                               Security(internal_bearer)] = None) -> None:
    """Let a read through only with the bearer ``INTERNAL_API_TOKEN``.

    :raises ApiError: 401 without the token, with another, or when none is configured.
    """
    expected = get_settings().internal_api_token
    secret = expected.get_secret_value() if expected is not None else ""
    if not secret:
        raise unauthorized("the read endpoints are off: INTERNAL_API_TOKEN is not set")
    if credentials is None:
        raise unauthorized("send Authorization: Bearer <INTERNAL_API_TOKEN>")
    if not hmac.compare_digest(credentials.credentials.encode(), secret.encode()):
        raise unauthorized("the bearer token is not the internal API token")


async def hook_credentials(
        _token: Annotated[HTTPAuthorizationCredentials | None, Security(source_bearer)] = None,
        _signature: Annotated[str | None, Security(source_signature)] = None) -> None:
    """Declares the two ways a webhook authenticates; :func:`authenticate` checks them."""


def authenticate(source: SourceRow, *, body: bytes, headers: Mapping[str, str],
                 now: datetime) -> str:
    """Check a webhook's credentials against ``source``; return its webhook id.

    A request with a ``webhook-signature`` header is verified as a Standard
    Webhook (with the previous secret too, for 24 hours after a rotation);
    otherwise it needs ``Authorization: Bearer <token>``. A bearer request
    without a ``webhook-id`` gets a generated one.

    :raises ApiError: 401 for missing or wrong credentials, 400 for a malformed webhook-id.
    """
    if headers.get("webhook-signature") is not None:
        _verify_signature(source, body, headers, now)
    else:
        _verify_token(source, headers.get("authorization"))
    webhook_id = headers.get("webhook-id")
    if webhook_id is None:
        return f"gen_{uuid.uuid4().hex}"
    if not WEBHOOK_ID.match(webhook_id):
        raise ApiError(400, "invalid_webhook_id",
                       "webhook-id must be 1 to 128 visible ASCII characters")
    return webhook_id


def _verify_signature(source: SourceRow, body: bytes, headers: Mapping[str, str],
                      now: datetime) -> None:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise unauthorized("the body is not UTF-8, so its signature cannot be verified") from None
    signed = {name: headers.get(name) or "" for name in SIGNATURE_HEADERS}
    reason: str | None = None
    for secret in sources.verifying_secrets(_as_source(source), now=now):
        try:
            Webhook(secret).verify(text, signed, json_parse=False)
            return
        except WebhookVerificationError as exc:
            reason = reason or str(exc)
        except (ValueError, TypeError):  # a signature that is not "v1,<base64>"
            reason = reason or "malformed"
    raise unauthorized(_explain(reason))


def _explain(reason: str | None) -> str:
    text = (reason or "").lower()
    if "missing" in text:
        return ("a signed webhook needs the webhook-id, webhook-timestamp and "
                "webhook-signature headers")
    if "too old" in text or "too new" in text:
        return "webhook-timestamp is more than 5 minutes away from now; sign at send time"
    if "invalid signature headers" in text:
        return "webhook-timestamp must be a Unix time in seconds"
    if "malformed" in text:
        return "webhook-signature must be one or more space-separated 'v1,<base64>'"
    return "the signature does not match this source's secret"


def _verify_token(source: SourceRow, authorization: str | None) -> None:
    if not authorization:
        raise unauthorized("missing credentials: sign the webhook (webhook-id, "
                           "webhook-timestamp, webhook-signature) or send "
                           "Authorization: Bearer <token>")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise unauthorized("Authorization must be 'Bearer <token>'")
    if not sources.token_matches(_as_source(source), token):
        raise unauthorized("the bearer token does not match this source")


def _as_source(row: SourceRow) -> Source:
    """The rules of :mod:`db.sources` read only the credential columns, which a
    :class:`SourceRow` has under the same names (it is not an ORM object, to stay cheap)."""
    return cast(Source, row)
