"""Read endpoints for the main application, behind the bearer ``INTERNAL_API_TOKEN``.

An id that is not the account's, or an account that does not exist, answers
404 with the same words either way.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Path, Query
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session

from api.auth import require_internal_token
from api.errors import UNAVAILABLE, ApiError, not_found, responses
from db import queries
from db.engine import session_scope
from db.errors import NotFound, Rejected
from schemas.common import Channel
from schemas.views import CreditsView, EventView, LedgerPage, ProfilePage, ProfileView
from worker import runtime

T = TypeVar("T")
router = APIRouter(prefix="/v1/accounts/{account_id}", tags=["reads"],
                   dependencies=[Depends(require_internal_token)],
                   responses=responses(400, 401, 404, 422, 503))

#: ids as the main application and we make them: no control characters, no spaces
_ID = re.compile(r"^[^\x00-\x20\x7f]{1,128}$")
AccountId = Annotated[str, Path(description="The main application's account id.")]
Limit = Annotated[int, Query(ge=1, le=queries.MAX_PAGE, description="Rows per page.")]
Cursor = Annotated[str | None, Query(max_length=512, pattern=r"^[A-Za-z0-9_-]+$",
                                     description="`next_cursor` of the previous page.")]
NOT_FOUND = "no such account, or no such id in it"


def _read(fn: Callable[[Session], T], *ids: str, cursor: str | None = None) -> T:
    if not all(_ID.match(i) for i in ids):
        raise not_found(NOT_FOUND)
    try:
        with session_scope(runtime.sessions()) as session:
            return fn(session)
    except NotFound:
        raise not_found(NOT_FOUND) from None
    except Rejected as exc:
        raise ApiError(400, "bad_cursor", str(exc)) from None
    except UNAVAILABLE:
        raise
    except StatementError:
        # a cursor that decodes to text the database refuses (a naive time, a NUL)
        if cursor is None:
            raise
        raise ApiError(400, "bad_cursor", "bad cursor") from None


@router.get("/credits", response_model=CreditsView, summary="An account's credits")
def credits(account_id: AccountId) -> CreditsView:
    """Plan, period, monthly allowance and remaining, extra remaining, total, next renewal."""
    return _read(lambda s: queries.credits(s, account_id, now=runtime.now()), account_id)


@router.get("/ledger", response_model=LedgerPage, summary="An account's ledger, newest first")
def ledger(account_id: AccountId, limit: Limit = 50, cursor: Cursor = None) -> LedgerPage:
    return _read(lambda s: queries.ledger_page(s, account_id, limit=limit, cursor=cursor),
                 account_id, cursor=cursor)


@router.get("/events/{event_id}", response_model=EventView, summary="The outcome of an event")
def event(account_id: AccountId, event_id: Annotated[str, Path()]) -> EventView:
    return _read(lambda s: queries.event_view(s, account_id, event_id), account_id, event_id)


@router.get("/profiles", response_model=ProfilePage, summary="Profiles, newest first")
def profiles(account_id: AccountId, source: Annotated[Channel | None, Query(
                 description="Only profiles from this channel.")] = None,
             limit: Limit = 50, cursor: Cursor = None) -> ProfilePage:
    return _read(lambda s: queries.profiles_page(
        s, account_id, source=source.value if source else None, limit=limit, cursor=cursor),
        account_id, cursor=cursor)


@router.get("/profiles/{profile_id}", response_model=ProfileView,
            summary="A stored, normalised profile with its source and event")
def profile(account_id: AccountId, profile_id: Annotated[str, Path()]) -> ProfileView:
    return _read(lambda s: queries.get_profile(s, account_id, profile_id),
                 account_id, profile_id)
