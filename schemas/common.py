"""Types shared by messages, leads and views."""

from __future__ import annotations

import enum
import re
from datetime import date, datetime
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
)

#: cents; the price of one extra credit (R4)
CREDIT_PRICE_CENTS = 900


class Channel(enum.StrEnum):
    """Where an event came in; it alone decides the profile's source (R1)."""

    manual = "manual"
    website = "website"
    funnel = "funnel"


class Bucket(enum.StrEnum):
    """Which balance a charge came out of."""

    monthly = "monthly"
    extra = "extra"
    unlimited = "unlimited"


class Status(enum.StrEnum):
    """The status of an event; every event ends in one of the last five."""

    received = "received"
    created = "created"
    duplicate = "duplicate"
    refused = "refused"
    invalid = "invalid"
    failed = "failed"


FINAL_STATUSES = frozenset(
    {Status.created, Status.duplicate, Status.refused, Status.invalid, Status.failed}
)


class Strict(BaseModel):
    """A model that rejects fields it does not know."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}; use an IANA name such as UTC") from exc
    return name


#: a plain ASCII address that email-validator accepts as it is, lower-cased: letters, digits
#: and ``._+-`` before the @ (no dot first, last or doubled), LDH labels after it (no
#: hyphen at either end, no ``--`` anywhere) and a top-level domain of letters; anything
#: else, or a special-use domain, goes through email-validator itself
_PLAIN_EMAIL = re.compile(
    r"(?!.*\.\.)[a-z0-9+_-](?:[a-z0-9._+-]{0,62}[a-z0-9+_-])?"
    r"@(?!.*--)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}",
    re.ASCII | re.IGNORECASE)
_SPECIAL_USE = tuple(SPECIAL_USE_DOMAIN_NAMES)


def _normalise_email(value: str) -> str:
    """The address validated and lower-cased (email-validator's rules, without DNS).

    A plain ASCII address, by far the most common, skips email-validator: it would
    accept it unchanged but for the domain's case (tests/schemas check both agree).
    """
    if len(value) <= 254 and _PLAIN_EMAIL.fullmatch(value):
        lowered = value.lower()
        domain = lowered.rpartition("@")[2]
        if len(domain) <= 253 and not any(
                domain == name or domain.endswith("." + name) for name in _SPECIAL_USE):
            return lowered
    try:
        checked = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address: {exc}") from exc
    return checked.normalized.lower()


_PHONE_CHARS = re.compile(r"^[0-9+().\-\s/x]{3,40}$")


#: validation context key: check phone numbers' shape, and leave them as sent
PHONE_AS_SENT = "phone_as_sent"


def check_phone(value: str) -> str:
    """The value, stripped, if it can be a phone number: what decides whether
    :func:`normalise_phone` accepts it (it never refuses what this accepts).

    :raises ValueError: when the value holds no phone number at all.
    """
    value = value.strip()
    if not _PHONE_CHARS.match(value) or sum(c.isdigit() for c in value) < 3:
        raise ValueError("not a phone number")
    return value


def normalise_phone(value: str, *, region: str = "US") -> str:
    """E.164 where the number parses as valid, else the digits as given.

    :raises ValueError: when the value holds no phone number at all.
    """
    value = check_phone(value)
    try:
        parsed = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return value
    if phonenumbers.is_valid_number(parsed):
        return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return value


def _phone(value: str, info: ValidationInfo) -> str:
    """Normalised, or only checked when the context says :data:`PHONE_AS_SENT` (the web
    process stores a lead that way; the worker normalises it as it makes the profile)."""
    if info.context is not None and info.context.get(PHONE_AS_SENT):
        return check_phone(value)
    return normalise_phone(value)


#: Unicode's control characters (category Cc): C0, DEL and C1
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _no_control(value: str) -> str:
    """Refuse control characters in a name or identifier (PostgreSQL refuses NUL anyway)."""
    if _CONTROL.search(value):
        raise ValueError("control characters are not allowed")
    return value


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("NUL characters are not allowed")
    return value


TimeZoneName = Annotated[str, StringConstraints(min_length=1, max_length=64),
                         AfterValidator(_check_timezone)]
Email = Annotated[str, StringConstraints(max_length=254), AfterValidator(_normalise_email)]
Phone = Annotated[str, StringConstraints(max_length=40), AfterValidator(_phone)]
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^\S+$"),
                       AfterValidator(_no_control)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=100), AfterValidator(_no_control)]
ShortText = Annotated[str, StringConstraints(max_length=200), AfterValidator(_no_control)]
ExtraMap = Annotated[dict[Annotated[str, StringConstraints(max_length=64)],
                          Annotated[str, StringConstraints(max_length=1000),
                                    AfterValidator(_no_nul)]],
                     Field(max_length=50)]

__all__ = [
    "AwareDatetime", "Bucket", "CREDIT_PRICE_CENTS", "Channel", "Email", "ExtraMap",
    "FINAL_STATUSES", "Identifier", "Name", "Phone", "ShortText", "Status", "Strict",
    "TimeZoneName", "date", "datetime", "normalise_phone",
]
