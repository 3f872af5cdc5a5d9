"""Lead sources: the website forms and funnel tools of an account, and their credentials.

A source carries two credentials. Its Standard Webhooks secret (``whsec_`` +
base64) is stored in clear because HMAC needs it to verify a signature; its
bearer token, for tools that cannot sign, is stored only as a sha256 digest.
Rotating the secret keeps the old one valid for :data:`ROTATION_GRACE`; a new
token replaces the old one at once (only one digest is kept).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.errors import NotFound, Rejected
from db.ledger import get_account
from db.models import Source
from schemas.common import Channel

#: how long a rotated-out secret still verifies signatures
ROTATION_GRACE = timedelta(hours=24)
#: random bytes in a signing secret (Standard Webhooks asks for 24 to 64)
SECRET_BYTES = 24
#: random bytes in a bearer token
TOKEN_BYTES = 32
#: the channels a source may feed; ``manual`` only comes from the main app
LEAD_CHANNELS = frozenset({Channel.website, Channel.funnel})
#: characters of a source's name
MAX_NAME = 200


@dataclass(frozen=True, slots=True)
class Credentials:
    """What an operator is shown once: the source and its credentials in clear."""

    source: Source
    secret: str
    token: str | None


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def new_token() -> str:
    return "cct_" + secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def register(session: Session, account_id: str, *, kind: Channel, name: str,
             now: datetime) -> Credentials:
    """Register a lead source for an account.

    :raises NotFound: when the account does not exist.
    :raises Rejected: for the ``manual`` channel or an empty or overlong name.
    """
    if kind not in LEAD_CHANNELS:
        raise Rejected("a source is of kind website or funnel")
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME:
        raise Rejected(f"a source name has 1 to {MAX_NAME} characters")
    get_account(session, account_id)
    secret, token = new_secret(), new_token()
    source = Source(id=f"src_{secrets.token_hex(16)}", account_id=account_id, kind=kind.value,
                    name=name, secret=secret, token_hash=hash_token(token), enabled=True,
                    created_at=now)
    session.add(source)
    session.flush()
    return Credentials(source=source, secret=secret, token=token)


def find(session: Session, source_id: str) -> Source | None:
    """The source named in a webhook URL, or None; disabled ones too (they answer 410)."""
    return session.get(Source, source_id)


def list_for(session: Session, account_id: str) -> list[Source]:
    """The account's sources, oldest first.

    :raises NotFound: when the account does not exist.
    """
    get_account(session, account_id)
    return list(session.execute(
        select(Source).where(Source.account_id == account_id)
        .order_by(Source.created_at, Source.id)).scalars())


def rotate(session: Session, source_id: str, *, now: datetime,
           token: bool = False) -> Credentials:
    """Give a source a new secret; the old one verifies for 24 more hours.

    With ``token``, also issue a new bearer token; the old token stops at once.

    :raises NotFound: when there is no such source.
    :raises Rejected: when the source is disabled.
    """
    source = _lock(session, source_id)
    if not source.enabled:
        raise Rejected(f"source {source_id!r} is disabled")
    secret = new_secret()
    source.previous_secret = source.secret
    source.previous_secret_expires_at = now + ROTATION_GRACE
    source.secret = secret
    new = new_token() if token else None
    if new is not None:
        source.token_hash = hash_token(new)
    session.flush()
    return Credentials(source=source, secret=secret, token=new)


def disable(session: Session, source_id: str) -> Source:
    """Stop a source: its webhooks answer 410 from now on. Safe to repeat.

    :raises NotFound: when there is no such source.
    """
    source = _lock(session, source_id)
    source.enabled = False
    source.previous_secret = None
    source.previous_secret_expires_at = None
    session.flush()
    return source


def _lock(session: Session, source_id: str) -> Source:
    source = session.execute(
        select(Source).where(Source.id == source_id).with_for_update()
    ).scalar_one_or_none()
    if source is None:
        raise NotFound(f"no source {source_id!r}")
    return source


def verifying_secrets(source: Source, *, now: datetime) -> list[str]:
    """The secrets a signature may be made with at ``now``: current first."""
    valid = [source.secret]
    expires = source.previous_secret_expires_at
    if source.previous_secret and expires is not None and now < expires:
        valid.append(source.previous_secret)
    return valid


def token_matches(source: Source, token: str) -> bool:
    """Whether ``token`` is this source's bearer token (constant-time)."""
    return hmac.compare_digest(hash_token(token), source.token_hash)
