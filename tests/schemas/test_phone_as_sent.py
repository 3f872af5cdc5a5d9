"""The web keeps a lead's phone as sent; the worker normalises it. Both accept the same leads."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.common import check_phone, normalise_phone
from schemas.leads import LeadProfile, UnusableLead, lead_from_body


def verdict(check, value: str) -> str | None:
    try:
        return check(value)
    except ValueError:
        return None


phones = st.one_of(
    st.text(alphabet="0123456789+().- /xa\t", max_size=45),
    st.builds(lambda cc, n, sep: f"+{cc}{sep}{n}", st.integers(1, 999),
              st.integers(0, 10**12), st.sampled_from(["", " ", "-", " ("])),
    st.sampled_from(["(415) 555-2671", "+1 415 555 2671", "415.555.2671", "+44 20 7946 0958",
                     "555-2671", "12", "abc", " +14155552671 ", "+999 1234567"]),
)


@settings(max_examples=2000, deadline=None)
@given(value=phones)
def test_the_check_accepts_exactly_what_normalising_accepts(value):
    checked, normalised = verdict(check_phone, value), verdict(normalise_phone, value)
    assert (checked is None) == (normalised is None)
    if checked is not None:
        assert checked == value.strip()
        assert normalise_phone(checked) == normalised  # the worker gets the same answer


@settings(max_examples=500, deadline=None)
@given(value=phones, name=st.sampled_from(["", "Ada"]))
def test_a_lead_passes_as_sent_exactly_when_it_passes_normalised(value, name):
    body = {"phone": value, "first_name": name}

    def outcome(as_sent: bool) -> tuple[bool, list | None]:
        try:
            lead_from_body(body, phone_as_sent=as_sent)
        except UnusableLead as exc:
            return False, exc.errors
        return True, None

    assert outcome(True) == outcome(False)


def test_the_stored_lead_becomes_the_normalised_one():
    sent = lead_from_body({"name": "Ada Lovelace", "phone": "(415) 555-2671"},
                          phone_as_sent=True)
    assert sent.phone == "(415) 555-2671"
    stored = LeadProfile.model_validate(sent.model_dump(mode="json"))  # the worker's read
    assert stored.phone == "+14155552671"
    assert lead_from_body({"phone": "(415) 555-2671"}).phone == "+14155552671"


@pytest.mark.parametrize("as_sent", [True, False])
def test_a_value_that_is_no_phone_is_refused_either_way(as_sent):
    with pytest.raises(UnusableLead) as refused:
        lead_from_body({"first_name": "Ada", "phone": "call me"}, phone_as_sent=as_sent)
    assert [e["loc"] for e in refused.value.errors] == [["phone"]]
