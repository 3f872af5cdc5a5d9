"""Fuzzing the contract: every schema refuses bad input only with a ValidationError, and the
lead field mapping takes any body without raising anything but UnusableLead.

Hypothesis generates arbitrary JSON, JSON shaped like each model (its own field
names with odd values), raw text and bytes. What is accepted must also survive
the round trip the worker makes: a lead is stored as ``model_dump(mode="json")``
and validated again by ``ingest_lead``, so that must give the same lead.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import string
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from api import body as http_body
from schemas import common, http, leads, messages, views
from schemas.leads import (
    MAX_EXTRA,
    MAX_EXTRA_KEY,
    MAX_EXTRA_VALUE,
    LeadProfile,
    UnusableLead,
    field_for,
    lead_from_body,
    map_fields,
    unflatten_form,
)
from worker.handlers import errors_of

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODELS = sorted(
    {obj for module in (common, http, leads, messages, views)
     for _, obj in inspect.getmembers(module, inspect.isclass)
     if issubclass(obj, BaseModel) and obj.__module__ == module.__name__
     and obj is not common.Strict},
    key=lambda m: m.__name__)
PROFILE_FIELDS = {"first_name", "last_name", "email", "phone", "date_of_birth", "state", "extra"}

#: strings a sender might put anywhere: the shapes our validators care about, and trouble
odd_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "\x00", "ada@example.com", "ADA@Example.COM", "not-an-email",
                     "a@b", "+14155552671", "(415) 555-2671", "415.555.2671 x12", "12",
                     "1990-02-30", "02/13/1990", "13/02/1990", "1990-01-01T10:00:00Z",
                     "2026-11-10T12:00:00+00:00", "2026-11-10T12:00:00", "UTC",
                     "Europe/Nowhere", "America/New_York", "Lovelace, Ada", "Ada King Lovelace",
                     "\ud800", "𝒜da", "١٢٣", "x" * 300, "NaN", "-1", "1e309"]),
    st.from_regex(r"[A-Za-z0-9._%+-]{1,20}@[A-Za-z0-9-]{1,10}\.[a-z]{2,4}", fullmatch=True),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    odd_text)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(odd_text, inner, max_size=4)), max_leaves=8)
keys = st.one_of(odd_text, st.sampled_from([
    "firstName", "first_name", "FNAME", "Full Name", "name", "your-name", "Email",
    "email_address", "contact[email]", "phone_number", "mobile", "dob", "birthday", "state",
    "contact", "data", "fields", "properties", "value", "title", "source", "account_id",
    "channel", "location", "extra"]))
bodies = st.recursive(
    st.dictionaries(keys, scalars, max_size=8),
    lambda inner: st.dictionaries(keys, st.one_of(scalars, inner, st.lists(
        st.one_of(scalars, inner), max_size=3)), max_size=8),
    max_leaves=12)


def shaped(model: type[BaseModel]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with the model's own field names (most of them), odd values, and extras."""
    names = list(model.model_fields)
    return st.fixed_dictionaries(
        {}, optional={name: st.one_of(scalars, json_values, st.dictionaries(
            st.sampled_from(names + ["extra", "x"]), scalars, max_size=4))
            for name in [*names, "unexpected"]})


@settings(FUZZ, max_examples=15 * len(MODELS))
@given(case=st.sampled_from(MODELS).flatmap(
    lambda m: st.tuples(st.just(m), st.one_of(json_values, shaped(m)))))
def test_every_schema_refuses_only_with_a_validation_error(case):
    model, value = case
    try:
        parsed = model.model_validate(value)
    except ValidationError as exc:
        assert all("input" not in e for e in errors_of(exc))
        return
    again = model.model_validate(parsed.model_dump(mode="json"))
    assert again == parsed, "what was accepted must read back the same"


#: a valid message of each kind the main app sends, to change one field of
VALID: dict[type[BaseModel], dict[str, Any]] = {
    messages.CreateManualProfile: {
        "request_id": "r-1", "account_id": "acme", "created_by": "agent-7",
        "occurred_at": "2026-11-10T12:00:00+00:00",
        "client": {"first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.com",
                   "phone": "+14155552671", "date_of_birth": "1990-01-02", "state": "CA",
                   "extra": {"k": "v"}}},
    messages.UpsertAccount: {"account_id": "acme", "plan": "pro", "timezone": "UTC",
                             "occurred_at": "2026-11-10T12:00:00+00:00"},
    messages.PurchaseCredits: {"purchase_id": "p-1", "account_id": "acme", "quantity": 2,
                               "amount_cents": 1800, "occurred_at": "2026-11-10T12:00:00Z"},
    messages.IngestLead: {"event_id": "evt_1"},
    messages.RenewMonthlyCredits: {"at": "2026-12-01T00:00:00Z"},
    LeadProfile: {"first_name": "Ada", "email": "ada@example.com", "phone": "415 555 2671"},
}


@settings(FUZZ, max_examples=400)
@given(case=st.sampled_from(sorted(VALID, key=lambda m: m.__name__)).flatmap(
    lambda m: st.tuples(st.just(m), st.sampled_from(
        [(k,) for k in VALID[m]] + [("client", k) for k in VALID[m].get("client", {})]),
        st.one_of(scalars, json_values))))
def test_a_message_with_one_odd_field_is_refused_or_reads_back_the_same(case):
    model, path, value = case
    payload = json.loads(json.dumps(VALID[model]))
    target = payload
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    try:
        parsed = model.model_validate(payload)
    except ValidationError:
        return
    assert model.model_validate(parsed.model_dump(mode="json")) == parsed


@settings(FUZZ, max_examples=10 * len(MODELS))
@given(model=st.sampled_from(MODELS), text=st.one_of(
    st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_every_schema_refuses_raw_text_only_with_a_validation_error(model, text):
    with contextlib.suppress(ValidationError):
        model.model_validate_json(text)


@FUZZ
@given(body=bodies)
def test_the_field_mapping_takes_any_body(body):
    mapped = map_fields(body)
    assert set(mapped.fields) <= PROFILE_FIELDS
    assert set(mapped.origin) <= PROFILE_FIELDS - {"extra"}
    extra = mapped.fields.get("extra", {})
    assert len(extra) <= MAX_EXTRA
    assert all(len(k) <= MAX_EXTRA_KEY and len(v) <= MAX_EXTRA_VALUE
               and isinstance(v, str) for k, v in extra.items())
    assert all("\x00" not in str(v) for v in mapped.fields.values())


@FUZZ
@given(body=st.one_of(bodies, json_values))
def test_a_body_makes_a_lead_or_says_why(body):
    try:
        lead = lead_from_body(body)
    except UnusableLead as exc:
        assert exc.errors
        assert all(set(e) <= {"loc", "msg", "type", "field"} for e in exc.errors)
        return
    assert lead.first_name or lead.last_name or lead.email or lead.phone
    stored = json.loads(json.dumps(lead.model_dump(mode="json")))
    assert LeadProfile.model_validate(stored) == lead, "ingest_lead reads the stored lead"


@FUZZ
@given(raw=st.one_of(st.binary(max_size=300), bodies.map(lambda b: json.dumps(b).encode()),
                     st.lists(st.tuples(keys, odd_text), max_size=8).map(
                         lambda pairs: "&".join(f"{k}={v}" for k, v in pairs).encode(
                             "utf-8", "surrogatepass"))),
       kind=st.sampled_from([http_body.JSON, http_body.FORM]))
def test_a_raw_webhook_body_parses_or_says_why(raw, kind):
    try:
        lead_from_body(http_body.parse(raw, kind))
    except UnusableLead as exc:
        assert exc.errors


@FUZZ
@given(pairs=st.lists(st.tuples(st.one_of(keys, st.text(alphabet="ab[]", max_size=8)),
                                odd_text), max_size=12))
def test_any_form_unflattens(pairs):
    tree = unflatten_form(pairs)

    def plain(node: Any) -> bool:
        if isinstance(node, dict):
            return all(isinstance(k, str) and plain(v) for k, v in node.items())
        if isinstance(node, list):
            return all(isinstance(v, str) for v in node)
        return isinstance(node, str)

    assert isinstance(tree, dict) and plain(tree)


@FUZZ
@given(key=st.text(alphabet=string.printable, max_size=30), value=odd_text)
def test_the_channel_and_account_never_come_from_a_body(key, value):
    body = {"email": "ada@example.com", key: value, "source": "manual",
            "account_id": "someone-else", "channel": "manual"}
    mapped = map_fields(body)
    assert field_for("source") is None and field_for("account_id") is None
    assert mapped.fields["extra"].get("account_id") == "someone-else" or key == "account_id"


@FUZZ
@given(marker=st.from_regex(r"[a-z]{6,12}", fullmatch=True),
       where=st.sampled_from(["first_name", "last_name", "email", "phone", "state"]),
       junk=st.sampled_from(["", "\x00", "@", "+", "x" * 300]))
def test_validation_errors_never_carry_the_personal_data_sent(marker, where, junk):
    payload = {"request_id": "r", "account_id": "a", "created_by": "u",
               "occurred_at": "2026-11-10T12:00:00+00:00",
               "client": {"first_name": "Ada", "last_name": "Lovelace",
                          where: f"{marker}{junk}@{marker}.example" if where == "email"
                          else f"{marker}{junk}"}}
    try:
        messages.CreateManualProfile.model_validate(payload)
    except ValidationError as exc:
        assert marker not in json.dumps(errors_of(exc))
