"""A webhook's body: read within the size limit, then parsed by its content type."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request

from api.errors import ApiError
from schemas.leads import UnusableLead, unflatten_form

#: bytes; the largest body taken, checked while reading (chunked bodies too)
MAX_BODY = 64 * 1024
#: fields a form body may hold
MAX_FORM_FIELDS = 1_000
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
#: content types a hook takes
ACCEPTED = (JSON, FORM)
_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})


def too_large() -> ApiError:
    return ApiError(413, "body_too_large",
                    f"the body is over {MAX_BODY // 1024} KiB ({MAX_BODY} bytes)")


async def read_limited(request: Request, limit: int = MAX_BODY) -> bytes:
    """The whole body, refused as soon as it passes ``limit`` bytes.

    :raises ApiError: 413, from the Content-Length header when it says so, or
        from the bytes read when there is none (chunked) or it understates.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def media_type(content_type: str | None) -> str:
    """``JSON`` or ``FORM`` for a ``Content-Type`` header.

    :raises ApiError: 415 for anything else, or a charset other than UTF-8.
    """
    main, _, params = (content_type or "").partition(";")
    main = main.strip().lower()
    kind = JSON if main == JSON or (main.startswith("application/") and main.endswith("+json")) \
        else FORM if main == FORM else None
    if kind is None:
        raise ApiError(415, "unsupported_media_type",
                       f"send Content-Type {JSON} or {FORM}, not {main or 'none'!r}"[:300])
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in _CHARSETS:
            raise ApiError(415, "unsupported_media_type", "the body's charset must be UTF-8")
    return kind


def parse(body: bytes, kind: str) -> Any:
    """The body as a JSON value or an unflattened form.

    :raises UnusableLead: when it is not valid JSON or not a UTF-8 form.
    """
    if kind == JSON:
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise UnusableLead([{"loc": [], "msg": "the body is not valid JSON",
                                 "type": "json_invalid"}]) from None
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except UnicodeDecodeError:
        raise UnusableLead([{"loc": [], "msg": "the form is not UTF-8",
                             "type": "form_invalid"}]) from None
    except ValueError:
        raise UnusableLead([{"loc": [], "msg": f"the form has over {MAX_FORM_FIELDS} fields",
                             "type": "form_invalid"}]) from None
    return unflatten_form(pairs)


def raw_text(body: bytes) -> str:
    """The body as stored on the event: text, with what a database cannot hold replaced."""
    return body.decode("utf-8", "replace").replace("\x00", "\ufffd")
