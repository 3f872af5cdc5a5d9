"""Leads from website forms and funnel tools, and how their fields map onto a profile.

A webhook body (a JSON object, or a form already unflattened by
:func:`unflatten_form`) is read as a tree. Each key is normalised, lower case
with everything but letters and digits removed (``First Name``, ``first_name``,
``firstName`` and ``FIRST-NAME`` all read ``firstname``), one known prefix may
be dropped (``your``, ``contact``, ``lead``, ``customer``, ``client``, ``billing``,
``primary``, ``personal``, ``home``, ``work``, ``main``: ``your-email``,
``contact_phone``, ``billing_first_name``), and the result is looked up here:

=================  ==========================================================================
profile field      normalised keys (examples of what senders write)
=================  ==========================================================================
``first_name``     firstname, fname, first, givenname, forename
                   (``firstName``, ``first_name``, ``FNAME``, ``First Name``, ``given_name``)
``last_name``      lastname, lname, last, surname, familyname
                   (``lastName``, ``last_name``, ``LNAME``, ``Last Name``, ``surname``)
full name          name, fullname (``name``, ``full_name``, ``Full Name``, ``your-name``,
                   ``contact_name``): split into first and last name where those are missing;
                   ``"Lovelace, Ada"`` splits at the comma, ``"Ada King Lovelace"`` after
                   the first word
``email``          email, emailaddress, mail, emailaddr
                   (``Email``, ``email_address``, ``E-mail``, ``EMAIL``, ``your-email``)
``phone``          phone, phonenumber, phoneno, telephone, tel, telephonenumber, mobile,
                   mobilephone, mobilenumber, cell, cellphone, cellnumber
                   (``Phone``, ``phone_number``, ``mobilephone``, ``your-tel``)
``date_of_birth``  dateofbirth, dob, birthdate, birthday; ``YYYY-MM-DD`` (a time after it is
                   ignored), ``MM/DD/YYYY`` or ``DD/MM/YYYY`` when the day is over 12
``state``          state, province, stateprovince, stateorprovince, statecode
=================  ==========================================================================

Where fields are looked for: at the top of the body, and inside objects whose
own key is one of :data:`CONTAINERS` (``contact``, ``lead``, ``data``, ``fields``,
``properties``, ...), up to three deep. So ``contact[email]`` (ActiveCampaign,
jQuery forms), ``{"data": {"email_address": ...}}`` (ClickFunnels 2.0),
``fields[email][value]`` (Elementor), ``{"properties": {"firstname": {"value": ...}}}``
(HubSpot) and ``{"name": {"first": ..., "last": ...}}`` all map. An object of its
own with a ``value`` key counts as that value. Other objects, such as
GoHighLevel's ``location`` (the agent's business, not the contact), are not
searched: their fields go to ``extra`` under a dotted key (``location.state``).

A shallower field wins over a deeper one, and the first in the body over a
later one; the losers go to ``extra``. Empty values are ignored.

Everything else goes to ``extra``, as text: its key is the sender's key (dotted
below a non-container object), cut to 64 characters, its value cut to 1,000
characters, lists of plain values joined with ``", "``, at most 50 fields, in
body order. The raw body is kept on the event, so nothing beyond those bounds
is lost. Keys such as ``source``, ``channel`` or ``account_id`` in a body are
plain extra data: the source that received the webhook alone decides the
profile's channel and account (R1).

A lead needs at least one of a name, an email, a phone. An email that is not
valid, a phone with no number in it, a date of birth in no known format, or a
name over 100 characters makes the lead invalid, and the error names the
sender's field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import Any, Self

from pydantic import Field, ValidationError, model_validator

from schemas.common import PHONE_AS_SENT, Email, ExtraMap, Name, Phone, ShortText, Strict

#: normalised key -> profile field; ``full_name`` is split into first and last
ALIASES: dict[str, str] = {
    **dict.fromkeys(("firstname", "fname", "first", "givenname", "forename"), "first_name"),
    **dict.fromkeys(("lastname", "lname", "last", "surname", "familyname"), "last_name"),
    **dict.fromkeys(("name", "fullname"), "full_name"),
    **dict.fromkeys(("email", "emailaddress", "mail", "emailaddr"), "email"),
    **dict.fromkeys(("phone", "phonenumber", "phoneno", "telephone", "tel", "telephonenumber",
                     "mobile", "mobilephone", "mobilenumber", "cell", "cellphone",
                     "cellnumber"), "phone"),
    **dict.fromkeys(("dateofbirth", "dob", "birthdate", "birthday"), "date_of_birth"),
    **dict.fromkeys(("state", "province", "stateprovince", "stateorprovince", "statecode"),
                    "state"),
}
#: prefixes dropped from a normalised key when what is left is known
PREFIXES = ("your", "contact", "lead", "customer", "client", "billing", "primary", "personal",
            "home", "work", "main")
#: normalised keys of objects that hold the contact's own fields
CONTAINERS = frozenset({
    "contact", "lead", "data", "fields", "customer", "person", "client", "subscriber",
    "submission", "entry", "payload", "attributes", "properties", "name", "fullname",
})
#: containers a field may sit in
MAX_CONTAINER_DEPTH = 3
#: nesting and leaves read from a body before the rest is left to the raw body
MAX_DEPTH = 8
MAX_LEAVES = 2_000
#: bounds of ``extra`` (the same as the profile's ExtraMap)
MAX_EXTRA = 50
MAX_EXTRA_KEY = 64
MAX_EXTRA_VALUE = 1_000

_NON_ALNUM = re.compile(r"[^0-9a-z]")
_US_DATE = re.compile(r"^(\d{1,2})[/.-](\d{1,2})[/.-](\d{4})$")
_ISO_DATE = re.compile(r"^(\d{4})[/-](\d{1,2})[/-](\d{1,2})(?:$|[T ])")


class LeadProfile(Strict):
    """A normalised lead; it needs at least one of a name, an email, a phone."""

    first_name: Name | None = None
    last_name: Name | None = None
    email: Email | None = None
    phone: Phone | None = None
    date_of_birth: date | None = None
    state: ShortText | None = None
    extra: ExtraMap = Field(default_factory=dict)

    @model_validator(mode="after")
    def _reachable(self) -> Self:
        if not (self.first_name or self.last_name or self.email or self.phone):
            raise ValueError("a lead needs at least one of: a name, an email, a phone")
        return self


_AS_SENT = {PHONE_AS_SENT: True}


class UnusableLead(ValueError):
    """A body that does not make a lead. ``errors`` say why, never with the values sent."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"unusable lead: {len(errors)} error(s)")
        self.errors = errors


@dataclass(slots=True)
class MappedLead:
    """Profile fields taken from a body, and the sender's key each came from."""

    fields: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Leaf:
    path: tuple[str, ...]
    value: str
    #: the label of a ``{"value": ..., "title": ...}`` object, a second name for it
    label: str | None = None


def normalise_key(key: str) -> str:
    return _NON_ALNUM.sub("", key.lower())


@lru_cache(maxsize=4096)
def _is_container(key: str) -> bool:
    return normalise_key(key) in CONTAINERS


@lru_cache(maxsize=4096)
def field_for(key: str) -> str | None:
    """The profile field a sender's key maps to, or None (remembered: a form sends the
    same keys with every lead)."""
    norm = normalise_key(key)
    if norm in ALIASES:
        return ALIASES[norm]
    for prefix in PREFIXES:
        if norm.startswith(prefix) and norm[len(prefix):] in ALIASES:
            return ALIASES[norm[len(prefix):]]
    return None


def lead_from_body(body: Any, *, phone_as_sent: bool = False) -> LeadProfile:
    """Map a webhook body onto a lead.

    :param phone_as_sent: check the phone number but keep it as sent, for the worker
        to normalise (``LeadProfile.model_validate`` of the stored lead does): the
        same leads pass, at half the cost on the web's hot path.
    :raises UnusableLead: when the body is not an object or the lead is not valid.
    """
    if not isinstance(body, Mapping):
        raise UnusableLead([{"loc": [], "msg": "the body must be a JSON object or a form",
                             "type": "not_an_object"}])
    mapped = map_fields(body)
    try:
        return LeadProfile.model_validate(mapped.fields,
                                          context=_AS_SENT if phone_as_sent else None)
    except ValidationError as exc:
        errors = []
        for e in exc.errors(include_input=False, include_url=False):
            error: dict[str, Any] = {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
            sent = mapped.origin.get(str(e["loc"][0])) if e["loc"] else None
            if sent is not None:
                error["field"] = sent
            errors.append(error)
        raise UnusableLead(errors) from None


def map_fields(body: Mapping[str, Any]) -> MappedLead:
    """Sort a body's fields into profile fields and ``extra`` (see the module's table)."""
    mapped = MappedLead()
    leaves = _leaves(body)
    targets = [_target(leaf) for leaf in leaves]
    used: set[int] = set()
    full_name: int | None = None
    for i in sorted(range(len(leaves)), key=lambda i: len(leaves[i].path)):
        target = targets[i]
        if target == "full_name" and full_name is None:
            full_name = i
        elif target is None or target == "full_name" or target in mapped.fields:
            continue
        else:
            value = leaves[i].value
            mapped.fields[target] = _parse_date(value) if target == "date_of_birth" else value
            mapped.origin[target] = _sender_key(leaves[i].path)
        used.add(i)
    if full_name is not None:
        _split_name(mapped, leaves[full_name].value, _sender_key(leaves[full_name].path))
    extra: dict[str, str] = {}
    for i, leaf in enumerate(leaves):
        if i not in used:
            _add_extra(extra, leaf)
    if extra:
        mapped.fields["extra"] = extra
    return mapped


def _target(leaf: _Leaf) -> str | None:
    parents = leaf.path[:-1]
    if len(parents) > MAX_CONTAINER_DEPTH or not all(_is_container(p) for p in parents):
        return None
    target = field_for(leaf.path[-1])
    if target is None and leaf.label:
        target = field_for(leaf.label)
    return target


def _sender_key(path: tuple[str, ...]) -> str:
    """The key as the sender named it: containers in front are left out."""
    start = 0
    while start < len(path) - 1 and _is_container(path[start]):
        start += 1
    return ".".join(path[start:])


def _add_extra(extra: dict[str, str], leaf: _Leaf) -> None:
    if len(extra) >= MAX_EXTRA:
        return
    for key in (_sender_key(leaf.path), ".".join(leaf.path)):
        key = key[:MAX_EXTRA_KEY]
        if key and key not in extra:
            extra[key] = leaf.value[:MAX_EXTRA_VALUE]
            return


def _leaves(body: Mapping[str, Any]) -> list[_Leaf]:
    """The non-empty plain values of a body, in order, with their key paths, the first
    ``MAX_LEAVES`` of them (one pass that appends, rather than nested generators: this
    runs for every webhook)."""
    found: list[_Leaf] = []
    _collect(body, (), 0, found)
    return found


def _collect(node: Any, path: tuple[str, ...], depth: int, found: list[_Leaf]) -> None:
    if depth > MAX_DEPTH or len(found) >= MAX_LEAVES:
        return
    if isinstance(node, Mapping):
        if path and "value" in node and _plain(node["value"]):
            label = node.get("title") or node.get("label")
            text = _text(node["value"])
            if text:
                found.append(_Leaf(path, text, label if isinstance(label, str) else None))
            return
        for key, child in node.items():
            if len(found) >= MAX_LEAVES:
                return
            if type(child) is str and depth < MAX_DEPTH:  # the usual field, without a call
                text = _clean(child).strip()
                if text:
                    found.append(_Leaf((*path, _clean(str(key))), text))
            else:
                _collect(child, (*path, _clean(str(key))), depth + 1, found)
    elif isinstance(node, list):
        if path and all(_plain(v) for v in node):
            text = ", ".join(t for t in (_text(v) for v in node) if t)
            if text:
                found.append(_Leaf(path, text))
        else:
            for i, child in enumerate(node[:MAX_LEAVES]):
                _collect(child, (*path, str(i)), depth + 1, found)
    elif path and _plain(node):
        text = _text(node)
        if text:
            found.append(_Leaf(path, text))


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return _clean(str(value)).strip()


def _clean(text: str) -> str:
    """Text a database can hold: no NUL character, no lone surrogate."""
    if text.isascii():  # no surrogate in it, and isascii() is O(1)
        return text.replace("\x00", "") if "\x00" in text else text
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def _parse_date(text: str) -> str:
    """ISO text for the dates forms send; anything else as it came, for the model to refuse."""
    iso = _ISO_DATE.match(text)
    us = _US_DATE.match(text)
    try:
        if iso:
            year, month, day = (int(g) for g in iso.groups())
        elif us:
            month, day, year = (int(g) for g in us.groups())
            if month > 12 >= day:
                month, day = day, month
        else:
            return text
        return date(year, month, day).isoformat()
    except ValueError:
        return text


def _split_name(mapped: MappedLead, full: str, key: str) -> None:
    """Fill the first and last name that are missing from a full name."""
    if "," in full:
        last, _, first = (p.strip() for p in full.partition(","))
    else:
        first, _, last = full.partition(" ")
        first, last = first.strip(), " ".join(last.split())
    for target, value in (("first_name", first), ("last_name", last)):
        if value and target not in mapped.fields:
            mapped.fields[target] = value
            mapped.origin[target] = key


def unflatten_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """A form's pairs as a tree: ``contact[email]=x`` -> ``{"contact": {"email": "x"}}``.

    A repeated key, or one ending in ``[]``, collects a list. A key that clashes
    with another's shape is kept whole (``a=1&a[b]=2`` -> ``{"a": "1", "a[b]": "2"}``).
    """
    tree: dict[str, Any] = {}
    for raw_key, value in pairs:
        segments = _segments(raw_key)
        node: Any = tree
        for seg in segments[:-1]:
            child = node.get(seg) if isinstance(node, dict) else None
            if child is None and isinstance(node, dict):
                child = node[seg] = {}
            node = child
        last = segments[-1]
        if not isinstance(node, dict) or isinstance(node.get(last), dict):
            tree.setdefault(raw_key, value)
        elif last in node:
            current = node[last]
            node[last] = [*current, value] if isinstance(current, list) else [current, value]
        else:
            node[last] = [value] if raw_key.endswith("[]") else value
    return tree


def _segments(key: str) -> list[str]:
    """``contact[email]`` -> ``["contact", "email"]``; ``tags[]`` -> ``["tags"]``."""
    head, bracket, rest = key.partition("[")
    if not bracket or not head or not rest.endswith("]"):
        return [key]
    inner = rest[:-1].split("][")
    if inner[-1] == "":
        inner.pop()
    if any(seg == "" or "[" in seg or "]" in seg for seg in inner):
        return [key]
    return [head, *inner]
