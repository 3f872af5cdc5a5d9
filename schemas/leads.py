"""Leads from website forms and funnel tools, once mapped onto a profile."""

from __future__ import annotations

from datetime import date
from typing import Self

from pydantic import Field, model_validator

from schemas.common import Email, ExtraMap, Name, Phone, ShortText, Strict


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
