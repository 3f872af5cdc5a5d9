"""Commands for the database, plans, accounts, credits, the ledger and events."""

from __future__ import annotations

import enum
import getpass
import uuid
from pathlib import Path

import typer
from rich.table import Table

from db import ledger, queries
from db.migrate import upgrade
from schemas.common import CREDIT_PRICE_CENTS, Bucket
from schemas.messages import UpsertAccount
from schemas.views import MismatchView, VerifyView
from worker import runtime
from worker.cli.common import JsonOption, console, emit_json, session
from worker.settings import get_settings


class AdjustBucket(enum.StrEnum):
    monthly = "monthly"
    extra = "extra"


db_app = typer.Typer(help="The database.", no_args_is_help=True)
plan_app = typer.Typer(help="Plans and their monthly allowance.", no_args_is_help=True)
account_app = typer.Typer(help="Accounts.", no_args_is_help=True)
credits_app = typer.Typer(help="An account's credits.", no_args_is_help=True)
ledger_app = typer.Typer(help="The append-only ledger.", no_args_is_help=True)
event_app = typer.Typer(help="Events and their outcomes.", no_args_is_help=True)
schemas_app = typer.Typer(help="The message contract.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    for sub, name in ((db_app, "db"), (plan_app, "plan"), (account_app, "account"),
                      (credits_app, "credits"), (ledger_app, "ledger"), (event_app, "event"),
                      (schemas_app, "schemas")):
        app.add_typer(sub, name=name)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the migrations (safe to run again)."""
    upgrade(get_settings().effective_database_url)
    typer.echo("database is up to date")


@plan_app.command("add")
def plan_add(code: str, monthly: int | None = typer.Option(None, "--monthly", min=0,
                                                           help="Credits per month."),
             unlimited: bool = typer.Option(False, "--unlimited", help="Never refused."),
             as_json: bool = JsonOption) -> None:
    """Add a plan: `plan add pro --monthly 3` or `plan add enterprise --unlimited`."""
    with session() as s:
        plan = ledger.add_plan(s, code, monthly=monthly, unlimited=unlimited, now=runtime.now())
        view = {"code": plan.code, "monthly_allowance": plan.monthly_allowance,
                "unlimited": plan.unlimited}
    if as_json:
        emit_json(view)
    else:
        typer.echo(f"plan {code}: " + ("unlimited" if unlimited else f"{monthly} a month"))


@plan_app.command("list")
def plan_list(as_json: bool = JsonOption) -> None:
    """List the plans."""
    with session() as s:
        plans = queries.plans(s)
    if as_json:
        emit_json([p.model_dump() for p in plans])
        return
    table = Table("plan", "monthly allowance")
    for p in plans:
        table.add_row(p.code, "unlimited" if p.unlimited else str(p.monthly_allowance))
    console.print(table)


@account_app.command("add")
def account_add(account_id: str, plan: str = typer.Option(..., "--plan"),
                timezone: str | None = typer.Option(None, "--timezone",
                                                    help="IANA zone, default UTC."),
                as_json: bool = JsonOption) -> None:
    """Create an account (or change its plan, as the `upsert_account` actor does)."""
    now = runtime.now()
    msg = UpsertAccount(account_id=account_id, plan=plan, timezone=timezone, occurred_at=now)
    with session() as s:
        ledger.upsert_account(s, msg.account_id, plan_code=msg.plan, timezone=msg.timezone,
                              occurred_at=msg.occurred_at, now=now)
        view = queries.credits(s, account_id, now=now)
    if as_json:
        emit_json(view)
    else:
        typer.echo(f"account {account_id} on plan {view.plan} ({view.timezone})")


@credits_app.command("show")
def credits_show(account_id: str, as_json: bool = JsonOption) -> None:
    """An account's plan, period and remaining credits."""
    with session() as s:
        view = queries.credits(s, account_id, now=runtime.now())
    if as_json:
        emit_json(view)
        return
    table = Table(show_header=False)
    for key, value in view.model_dump().items():
        table.add_row(key, "-" if value is None else str(value))
    console.print(table)


@credits_app.command("buy")
def credits_buy(account_id: str, quantity: int = typer.Argument(..., min=1, max=10_000),
                ref: str = typer.Option(..., "--ref", help="The purchase id (idempotent)."),
                as_json: bool = JsonOption) -> None:
    """Add purchased extra credits, the same path as the `purchase_credits` actor."""
    now = runtime.now()
    with session() as s:
        _, written = ledger.purchase(s, purchase_id=ref, account_id=account_id,
                                     quantity=quantity, amount_cents=quantity * CREDIT_PRICE_CENTS,
                                     now=now)
        view = queries.credits(s, account_id, now=now)
    if as_json:
        emit_json({"purchase_id": ref, "recorded": written, "credits": view.model_dump(
            mode="json")})
    else:
        typer.echo(("bought" if written else "already recorded:")
                   + f" {quantity} extra credits; {view.extra_remaining} extra available")


@credits_app.command("history")
def credits_history(account_id: str, limit: int = typer.Option(50, "--limit", min=1, max=500),
                    cursor: str | None = typer.Option(None, "--cursor"),
                    as_json: bool = JsonOption) -> None:
    """The account's ledger, newest first."""
    with session() as s:
        page = queries.ledger_page(s, account_id, limit=limit, cursor=cursor)
    if as_json:
        emit_json(page)
        return
    table = Table("id", "when", "kind", "bucket", "amount", "monthly", "extra", "why")
    for e in page.entries:
        table.add_row(str(e.id), e.created_at.isoformat(timespec="seconds"), e.kind, e.bucket,
                      f"{e.amount:+d}", str(e.monthly_after), str(e.extra_after),
                      e.reason or e.event_id or e.reference or "")
    console.print(table)
    if page.next_cursor:
        typer.echo(f"more: --cursor {page.next_cursor}")


#: lets a negative AMOUNT through (``adjust ACME -2``) instead of reading it as an option
_NEGATIVE_OK = {"ignore_unknown_options": True}


@credits_app.command("adjust", context_settings=_NEGATIVE_OK)
def credits_adjust(account_id: str, amount: int,
                   bucket: AdjustBucket = typer.Option(..., "--bucket", case_sensitive=False),
                   reason: str = typer.Option(..., "--reason"),
                   operator: str | None = typer.Option(None, "--operator",
                                                       help="Who; default: $USER."),
                   as_json: bool = JsonOption) -> None:
    """An operator's correction, positive or negative, never below zero."""
    now = runtime.now()
    who = operator or getpass.getuser()
    with session() as s:
        entry = ledger.adjust(s, account_id, amount=amount, bucket=Bucket(bucket.value),
                              reason=reason, actor=who, now=now,
                              key=f"adjust:{uuid.uuid4().hex}")
        view = queries.credits(s, account_id, now=now)
        entry_id = entry.id
    if as_json:
        emit_json({"entry_id": entry_id, "credits": view.model_dump(mode="json")})
    else:
        typer.echo(f"adjusted {bucket.value} by {amount:+d} (entry {entry_id}, by {who})")


@ledger_app.command("verify")
def ledger_verify(as_json: bool = JsonOption) -> None:
    """Check every balance against the sum of its ledger; exit 1 on any difference."""
    with session() as s:
        mismatches = ledger.verify(s)
        checked = queries.count_accounts(s)
    view = VerifyView(ok=not mismatches, accounts_checked=checked,
                      mismatches=[MismatchView(account_id=m.account_id, bucket=m.bucket,
                                               balance=m.balance, ledger=m.ledger)
                                  for m in mismatches])
    if as_json:
        emit_json(view)
    elif view.ok:
        typer.echo(f"ok: {checked} accounts, every balance equals its ledger")
    else:
        for m in view.mismatches:
            typer.echo(f"{m.account_id} {m.bucket}: balance {m.balance}, ledger {m.ledger}")
    if not view.ok:
        raise typer.Exit(1)


@event_app.command("show")
def event_show(account_id: str, event_id: str, as_json: bool = JsonOption) -> None:
    """The outcome of one event."""
    with session() as s:
        view = queries.event_view(s, account_id, event_id)
    if as_json:
        emit_json({"status": view.status, "source": view.source, "profile_id": view.profile_id,
                   "charged_bucket": view.charged_bucket, "reason": view.reason,
                   "event_id": view.event_id, "errors": view.errors})
        return
    for key, value in view.model_dump().items():
        typer.echo(f"{key}: {'-' if value is None else value}")


@schemas_app.command("export")
def schemas_export(directory: Path) -> None:
    """Write the JSON Schema of every message and view into DIRECTORY."""
    from schemas.export import export

    written = export(directory)
    for path in written:
        typer.echo(str(path))


