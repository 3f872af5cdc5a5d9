"""Reference actors on the worker's own broker set-up: the ceilings ``bench/worker.py`` measures.

``dramatiq bench.noop_actors`` (the Procfile's ``worker`` line with this module
in place of ``worker.actors``) gets the same settings, logging, middleware,
Redis broker and database engine as the real worker. Both actors take the
same message as ``create_manual_profile``:

* ``noop`` does nothing: the broker's and dramatiq's own cost;
* ``bare_charge`` does the bare minimum of a charge, the issue's second
  reference: one transaction that locks the account's balance row, takes one
  monthly credit and appends one ledger entry (an ``adjustment``, so that the
  balance still equals its ledger), three statements, no validation, no event,
  no profile, no outcome.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage
from sqlalchemy import text

from bench.worker import BARE_CHARGE_ACTOR, NOOP_ACTOR
from db.engine import session_scope
from schemas.messages import QUEUE_PROFILES
from worker import broker, logs, runtime
from worker.settings import get_settings

logs.configure(fmt=get_settings().log_format, level=get_settings().log_level)
broker.setup()

#: the reason on the bare charges' ledger entries
BARE_REASON = "bench: bare charge"

_LOCK = text("SELECT monthly_remaining, extra_remaining, period FROM balances "
             "WHERE account_id = :account_id FOR UPDATE")
_TAKE = text("UPDATE balances SET monthly_remaining = monthly_remaining - 1, updated_at = now() "
             "WHERE account_id = :account_id")
_ENTRY = text("INSERT INTO ledger_entries (account_id, kind, bucket, amount, period, "
              "idempotency_key, reason, monthly_after, extra_after, created_at) VALUES "
              "(:account_id, 'adjustment', 'monthly', -1, :period, :key, :reason, :monthly, "
              ":extra, now())")


@dramatiq.actor(actor_name=NOOP_ACTOR, queue_name=QUEUE_PROFILES,
                throws=broker.PERMANENT_ERRORS)
def noop(payload: Any) -> None:
    """Take the message and do nothing."""


@dramatiq.actor(actor_name=BARE_CHARGE_ACTOR, queue_name=QUEUE_PROFILES,
                throws=broker.PERMANENT_ERRORS)
def bare_charge(payload: Any) -> None:
    """Lock the balance, take one monthly credit, append its entry: one transaction."""
    message = CurrentMessage.get_current_message()
    account_id = payload["account_id"]
    with session_scope(runtime.sessions()) as session:
        conn = session.connection()
        row = conn.execute(_LOCK, {"account_id": account_id}).one()
        conn.execute(_TAKE, {"account_id": account_id})
        conn.execute(_ENTRY, {"account_id": account_id, "period": row.period,
                              "key": f"bare:{message.message_id if message else account_id}",
                              "reason": BARE_REASON, "monthly": row.monthly_remaining - 1,
                              "extra": row.extra_remaining})
