"""The field mapping of form and funnel tools onto a lead (schemas.leads)."""

from __future__ import annotations

from datetime import date
from urllib.parse import parse_qsl

import pytest

from schemas.leads import (
    MAX_DEPTH,
    MAX_EXTRA,
    MAX_LEAVES,
    UnusableLead,
    field_for,
    lead_from_body,
    unflatten_form,
)

#: a GoHighLevel workflow webhook: the contact at the top, the agency's business in
#: ``location`` (its state is not the contact's), custom fields in ``customData``
GOHIGHLEVEL = {
    "contact_id": "nmZ1bFx4", "first_name": "Ada", "last_name": "Lovelace",
    "full_name": "Ada Lovelace", "email": "Ada@Example.com", "phone": "+14155552671",
    "tags": "annuity,webinar", "country": "US", "state": "CA",
    "date_created": "2026-11-10T12:00:00.000Z", "contact_source": "facebook",
    "location": {"name": "Smith Retirement Group", "state": "TX", "id": "loc_1"},
    "workflow": {"id": "wf_1", "name": "New lead"},
    "customData": {"policy_type": "fixed indexed"},
    "source": "manual",
}
#: a ClickFunnels (classic) contact webhook
CLICKFUNNELS_CLASSIC = {
    "id": 81234, "page_id": 5512, "first_name": None, "last_name": None,
    "name": "Grace Hopper", "email": "grace@example.com", "phone": "415-555-2671",
    "address": "", "city": "Arlington", "state": "VA", "zip": "22201",
    "funnel_id": 99, "funnel_step_id": 12, "ip": "203.0.113.7",
    "additional_info": {"utm_source": "google", "date_of_birth": "1906-12-09"},
}
#: a ClickFunnels 2.0 webhook: the contact under ``data``
CLICKFUNNELS_2 = {
    "event_type": "contact.identified", "id": "wh_1",
    "data": {"id": 12, "public_id": "xyz", "email_address": "KATHERINE@example.com",
             "first_name": "Katherine", "last_name": "Johnson", "phone_number": "(757) 555 0100",
             "time_zone": "America/New_York", "custom_attributes": {"budget": "250k"}},
}
#: Webhooks by Zapier, form-encoded, with the labels a user typed
ZAPIER_FORM = ("First Name=Mary&Last Name=Jackson&Email Address=mary%40example.com"
               "&Phone Number=%2B1+202+555+0147&Date of Birth=04%2F09%2F1921"
               "&State=VA&Lead Source=Facebook+Lead+Ads")


def test_gohighlevel_shaped_payload():
    lead = lead_from_body(GOHIGHLEVEL)
    assert (lead.first_name, lead.last_name) == ("Ada", "Lovelace")
    assert (lead.email, lead.phone, lead.state) == ("ada@example.com", "+14155552671", "CA")
    assert lead.extra["location.state"] == "TX"
    assert lead.extra["customData.policy_type"] == "fixed indexed"
    assert lead.extra["source"] == "manual"
    assert "full_name" not in lead.extra


def test_clickfunnels_classic_shaped_payload_splits_the_name():
    lead = lead_from_body(CLICKFUNNELS_CLASSIC)
    assert (lead.first_name, lead.last_name) == ("Grace", "Hopper")
    assert lead.phone == "+14155552671" and lead.state == "VA"
    assert lead.date_of_birth is None  # not in a contact container: kept as extra
    assert lead.extra["additional_info.date_of_birth"] == "1906-12-09"
    assert lead.extra["zip"] == "22201" and "address" not in lead.extra


def test_clickfunnels_2_shaped_payload_under_data():
    lead = lead_from_body(CLICKFUNNELS_2)
    assert (lead.first_name, lead.last_name) == ("Katherine", "Johnson")
    assert lead.email == "katherine@example.com" and lead.phone == "+17575550100"
    assert lead.extra["custom_attributes.budget"] == "250k"
    assert lead.extra["event_type"] == "contact.identified"


def test_zapier_form_with_typed_labels():
    lead = lead_from_body(unflatten_form(parse_qsl(ZAPIER_FORM)))
    assert (lead.first_name, lead.last_name, lead.email) == ("Mary", "Jackson",
                                                            "mary@example.com")
    assert lead.phone == "+12025550147" and lead.date_of_birth == date(1921, 4, 9)
    assert lead.extra == {"Lead Source": "Facebook Lead Ads"}


@pytest.mark.parametrize("form, expected", [
    ("contact[email]=a%40example.com&contact[first_name]=Ada",
     {"email": "a@example.com", "first_name": "Ada"}),
    ("fields[name][value]=Ada+Lovelace&fields[email][value]=a%40example.com"
     "&fields[name][title]=Name&form[name]=Contact+us",
     {"first_name": "Ada", "last_name": "Lovelace", "email": "a@example.com"}),
    ("fields[field_3b1][value]=4155552671&fields[field_3b1][title]=Mobile",
     {"phone": "+14155552671"}),
    ("your-name=Ada&your-email=a%40example.com&your-tel=415.555.2671",
     {"first_name": "Ada", "email": "a@example.com", "phone": "+14155552671"}),
    ("FNAME=Ada&LNAME=Lovelace&EMAIL=a%40example.com", {"first_name": "Ada",
                                                       "last_name": "Lovelace"}),
])
def test_nested_and_prefixed_form_keys(form, expected):
    lead = lead_from_body(unflatten_form(parse_qsl(form)))
    for key, value in expected.items():
        assert getattr(lead, key) == value


@pytest.mark.parametrize("key, field", [
    ("firstName", "first_name"), ("fname", "first_name"), ("First Name", "first_name"),
    ("given_name", "first_name"), ("billing_first_name", "first_name"),
    ("lastName", "last_name"), ("surname", "last_name"), ("Email", "email"),
    ("email_address", "email"), ("E-mail", "email"), ("contact_email", "email"),
    ("phone_number", "phone"), ("Phone", "phone"), ("mobilephone", "phone"),
    ("cell", "phone"), ("dob", "date_of_birth"), ("Birth Date", "date_of_birth"),
    ("province", "state"), ("full_name", "full_name"), ("name", "full_name"),
    ("username", None), ("source", None), ("company", None), ("shipping_state", None),
])
def test_field_spellings(key, field):
    assert field_for(key) == field


@pytest.mark.parametrize("full, first, last", [
    ("Ada Lovelace", "Ada", "Lovelace"), ("Lovelace, Ada", "Ada", "Lovelace"),
    ("Ada", "Ada", None), ("Ada  King   Lovelace", "Ada", "King Lovelace"),
])
def test_a_full_name_is_split(full, first, last):
    lead = lead_from_body({"full_name": full})
    assert (lead.first_name, lead.last_name) == (first, last)


def test_a_full_name_fills_only_what_is_missing():
    lead = lead_from_body({"first_name": "Augusta", "name": "Ada Lovelace"})
    assert (lead.first_name, lead.last_name) == ("Augusta", "Lovelace")


@pytest.mark.parametrize("text, expected", [
    ("1980-01-31", date(1980, 1, 31)), ("1980-01-31T00:00:00.000Z", date(1980, 1, 31)),
    ("01/31/1980", date(1980, 1, 31)), ("1/2/1980", date(1980, 1, 2)),
    ("31/01/1980", date(1980, 1, 31)), ("1980/01/31", date(1980, 1, 31)),
])
def test_birth_dates_in_the_formats_forms_send(text, expected):
    assert lead_from_body({"email": "a@example.com", "dob": text}).date_of_birth == expected


def test_a_shallower_field_wins_and_the_other_is_kept():
    lead = lead_from_body({"contact": {"email": "deep@example.com"}, "email": "top@example.com"})
    assert lead.email == "top@example.com" and lead.extra == {"email": "deep@example.com"}


def test_empty_values_are_ignored():
    lead = lead_from_body({"first_name": "", "email": "  ", "phone": None, "lastName": "Lovelace",
                           "notes": ""})
    assert (lead.first_name, lead.email, lead.last_name) == (None, None, "Lovelace")
    assert lead.extra == {}


def test_extra_is_bounded():
    body = {"email": "a@example.com", **{f"field_{i}": "v" * 2000 for i in range(80)},
            "k" * 100: "x"}
    lead = lead_from_body(body)
    assert len(lead.extra) == MAX_EXTRA
    assert all(len(v) == 1000 for v in lead.extra.values())
    deep = lead_from_body({"email": "a@example.com", "x": {"k" * 100: "x"}})
    assert all(len(k) <= 64 for k in deep.extra)


def test_lists_values_and_odd_text_become_plain_extra_text():
    lead = lead_from_body({"email": "a@example.com", "tags": ["a", "b", 3], "ok": True,
                           "bad\x00key": "nul\x00here", "lone": "\ud800"})
    assert lead.extra["tags"] == "a, b, 3" and lead.extra["ok"] == "true"
    assert lead.extra["badkey"] == "nulhere" and lead.extra["lone"] == "?"


def test_a_body_field_never_names_the_channel_or_account():
    lead = lead_from_body({"email": "a@example.com", "source": "manual", "channel": "manual",
                           "account_id": "someone-else"})
    assert set(lead.model_dump()) == {"first_name", "last_name", "email", "phone",
                                      "date_of_birth", "state", "extra"}
    assert lead.extra == {"source": "manual", "channel": "manual",
                          "account_id": "someone-else"}


@pytest.mark.parametrize("body, loc, sent", [
    ({"company": "Acme"}, [], None),
    ({"Email": "not-an-email"}, ["email"], "Email"),
    ({"email": "a@example.com", "Phone Number": "call me"}, ["phone"], "Phone Number"),
    ({"email": "a@example.com", "dob": "last spring"}, ["date_of_birth"], "dob"),
    ({"contact": {"first_name": "x" * 101}}, ["first_name"], "first_name"),
    (["a@example.com"], [], None),
])
def test_an_unusable_lead_says_why_and_in_which_field(body, loc, sent):
    with pytest.raises(UnusableLead) as caught:
        lead_from_body(body)
    [error] = caught.value.errors
    assert error["loc"] == loc and error.get("field") == sent
    assert "not-an-email" not in str(error) and "call me" not in str(error)


@pytest.mark.parametrize("pairs, tree", [
    ([("a[b][c]", "1")], {"a": {"b": {"c": "1"}}}),
    ([("tags[]", "x"), ("tags[]", "y")], {"tags": ["x", "y"]}),
    ([("t", "x"), ("t", "y")], {"t": ["x", "y"]}),
    ([("a", "1"), ("a[b]", "2")], {"a": "1", "a[b]": "2"}),
    ([("[x]", "1"), ("a[", "2"), ("a[][b]", "3")], {"[x]": "1", "a[": "2", "a[][b]": "3"}),
])
def test_unflatten_form(pairs, tree):
    assert unflatten_form(pairs) == tree


def _nested(levels: int, leaf: dict[str, str]) -> dict[str, object]:
    body: dict[str, object] = dict(leaf)
    for _ in range(levels - 1):
        body = {"x": body}
    return body


def test_values_deeper_than_max_depth_are_left_to_the_raw_body():
    at_limit = lead_from_body({"email": "a@example.com", **_nested(MAX_DEPTH, {"k": "kept"})})
    assert at_limit.extra == {".".join(["x"] * (MAX_DEPTH - 1) + ["k"]): "kept"}
    beyond = lead_from_body({"email": "a@example.com", **_nested(MAX_DEPTH + 1, {"k": "lost"})})
    assert beyond.extra == {}


def test_only_the_first_max_leaves_values_are_read():
    filler = {f"k{i}": "v" for i in range(MAX_LEAVES)}
    assert lead_from_body({"email": "a@example.com", **filler}).email == "a@example.com"
    with pytest.raises(UnusableLead):
        lead_from_body({**filler, "email": "a@example.com"})
