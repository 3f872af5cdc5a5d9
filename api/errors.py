"""Clear JSON errors: a stable code, one sentence, and nothing about other accounts.

Every error answer has the shape of :class:`schemas.http.ErrorBody`, whether it
comes from our own checks, from request validation, from routing or from a
database that does not answer (503, never a 202 for an event not stored).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas.http import ErrorBody, FieldError
from worker.logs import get_logger

log = get_logger(__name__)

#: seconds a client is asked to wait before retrying after a 503
RETRY_AFTER_S = 5
#: database errors that mean "not now" rather than "wrong"
UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeout)


class ApiError(Exception):
    """An answer other than success; raised anywhere below an endpoint."""

    def __init__(self, status: int, error: str, message: str, *,
                 headers: dict[str, str] | None = None, event_id: str | None = None,
                 errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(f"{status} {error}: {message}")
        self.status, self.error, self.message = status, error, message
        self.headers, self.event_id, self.errors = headers, event_id, errors


def error_response(status: int, error: str, message: str, *,
                   headers: dict[str, str] | None = None, event_id: str | None = None,
                   errors: list[dict[str, Any]] | None = None) -> JSONResponse:
    body = ErrorBody(error=error, message=message, event_id=event_id,
                     errors=[FieldError.model_validate(e) for e in errors]
                     if errors is not None else None)
    return JSONResponse(body.model_dump(mode="json", exclude_none=True), status_code=status,
                        headers=headers)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def not_found(message: str = "not found") -> ApiError:
    return ApiError(404, "not_found", message)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI description of the error answers an endpoint may give."""
    return {s: {"model": ErrorBody, "description": HTTPStatus(s).phrase} for s in statuses}


def answer(exc: Exception) -> JSONResponse | None:
    """The answer to an :class:`ApiError` or a database that does not answer (503), as the
    installed handlers give it; None for any other exception (a 500, when it propagates)."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.error, exc.message, headers=exc.headers,
                              event_id=exc.event_id, errors=exc.errors)
    if isinstance(exc, UNAVAILABLE):
        log.error("database.unavailable", error=type(exc).__name__)
        return error_response(503, "unavailable", "the database is unavailable; retry later",
                              headers={"Retry-After": str(RETRY_AFTER_S)})
    return None


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    response = answer(exc)
    assert response is not None
    return response


async def _invalid_request(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": [str(p) if not isinstance(p, int) else p for p in e.get("loc", ())],
               "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
              for e in exc.errors()]
    return error_response(422, "invalid_request", "the request's parameters are not valid",
                          errors=errors)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    try:
        phrase = HTTPStatus(exc.status_code).phrase
    except ValueError:
        phrase = "error"
    code = phrase.lower().replace(" ", "_").replace("-", "_")
    message = exc.detail if isinstance(exc.detail, str) and exc.detail != phrase else phrase
    return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))


async def _unavailable(_request: Request, exc: Exception) -> JSONResponse:
    response = answer(exc)
    assert response is not None
    return response


async def _internal(_request: Request, exc: Exception) -> JSONResponse:
    log.error("request.failed", error=type(exc).__name__)
    return error_response(500, "internal", "internal error; it has been logged")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for exc_type in UNAVAILABLE:
        app.add_exception_handler(exc_type, _unavailable)
    app.add_exception_handler(Exception, _internal)
