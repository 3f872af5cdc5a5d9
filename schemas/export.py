"""JSON Schema export, so the main application can validate before it sends."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from schemas import leads, messages, views

#: file stem -> model; the messages keep their actor's name
MODELS: dict[str, type[BaseModel]] = {
    "create_manual_profile": messages.CreateManualProfile,
    "upsert_account": messages.UpsertAccount,
    "purchase_credits": messages.PurchaseCredits,
    "ingest_lead": messages.IngestLead,
    "renew_monthly_credits": messages.RenewMonthlyCredits,
    "profile_outcome": messages.ProfileOutcome,
    "lead_profile": leads.LeadProfile,
    "credits_view": views.CreditsView,
    "ledger_page": views.LedgerPage,
    "event_view": views.EventView,
    "profile_view": views.ProfileView,
}


def export(directory: Path) -> list[Path]:
    """Write ``<name>.schema.json`` for every model; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in MODELS.items():
        path = directory / f"{name}.schema.json"
        path.write_text(json.dumps(model.model_json_schema(), indent=2) + "\n")
        written.append(path)
    return written
