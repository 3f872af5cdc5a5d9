"""The plain-address shortcut of email validation agrees with email-validator."""

from __future__ import annotations

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.common import _PLAIN_EMAIL, _normalise_email


def library(value: str) -> str | None:
    try:
        return validate_email(value, check_deliverability=False).normalized.lower()
    except EmailNotValidError:
        return None


def ours(value: str) -> str | None:
    try:
        return _normalise_email(value)
    except ValueError:
        return None


local = st.text(alphabet="aZ09._+-!é", min_size=0, max_size=70)
label = st.one_of(st.text(alphabet="aZ09-", min_size=0, max_size=66),
                  st.sampled_from(["xn--abc", "ab--cd", "test", "local", "localhost",
                                   "example", "onion", "arpa", "invalid", "com", "x"]))
domain = st.lists(label, min_size=1, max_size=4).map(".".join)


@settings(max_examples=3000, deadline=None)
@given(local=local, domain=domain)
def test_the_shortcut_and_the_library_agree(local, domain):
    value = f"{local}@{domain}"
    assert ours(value) == library(value)


@pytest.mark.parametrize("value", [
    "Ada.Lovelace@Example.COM", "a@b.co", "-x+y_z@a-b.c-d.museum", "a..b@x.com",
    ".a@x.com", "a.@x.com", "a@x..com", "a@-x.com", "a@x-.com", "a@ab--cd.com",
    "a@x.test", "a@test", "a@sub.localhost", "a@1.2", "a@x.c", "K\u212a@x.com",
    "a" * 64 + "@x.com", "a" * 65 + "@x.com", "a@" + "b" * 63 + ".com",
    "a@" + "b" * 64 + ".com", "a@" + ".".join(["b" * 60] * 5) + ".com",
])
def test_edge_cases_agree(value):
    assert ours(value) == library(value)


def test_plain_addresses_take_the_shortcut():
    assert _PLAIN_EMAIL.fullmatch("ada.lovelace@example.com")
    assert not _PLAIN_EMAIL.fullmatch("ada@exämple.com")
