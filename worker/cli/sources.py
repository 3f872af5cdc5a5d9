"""``casecredits source``: register, list, rotate and disable the lead sources of an account."""

from __future__ import annotations

import enum

import typer

from db import sources
from db.models import Source
from schemas.common import Channel
from schemas.http import SourceCredentials, SourceView
from worker import runtime
from worker.cli.common import JsonOption, emit_json, session

source_app = typer.Typer(help="Lead sources: agents' website forms and funnel tools.",
                         no_args_is_help=True)


class Kind(enum.StrEnum):
    website = "website"
    funnel = "funnel"


def register(app: typer.Typer) -> None:
    app.add_typer(source_app, name="source")


def _view(source: Source) -> SourceView:
    return SourceView(source_id=source.id, account_id=source.account_id, kind=source.kind,
                      name=source.name, enabled=source.enabled, created_at=source.created_at,
                      previous_secret_expires_at=source.previous_secret_expires_at)


@source_app.command("add")
def source_add(account_id: str,
               kind: Kind = typer.Option(..., "--kind", case_sensitive=False,
                                         help="website (a form) or funnel (a funnel tool)."),
               name: str = typer.Option(..., "--name", help="What the operator calls it."),
               as_json: bool = JsonOption) -> None:
    """Register a source; prints its secret and token once, keep them now."""
    with session() as s:
        created = sources.register(s, account_id, kind=Channel(kind.value), name=name,
                                   now=runtime.now())
        creds = SourceCredentials(source_id=created.source.id, kind=created.source.kind,
                                  secret=created.secret, token=created.token)
    if as_json:
        emit_json(creds.model_dump(include={"source_id", "kind", "secret", "token"}))
        return
    typer.echo(f"source {creds.source_id} ({creds.kind}) for account {account_id}\n"
               f"  URL:    POST /v1/hooks/{creds.source_id}\n"
               f"  secret: {creds.secret}   (Standard Webhooks signing)\n"
               f"  token:  {creds.token}   (Authorization: Bearer, for tools that cannot sign)\n"
               "These are shown once; only the secret and a hash of the token are kept.")


@source_app.command("list")
def source_list(account_id: str, as_json: bool = JsonOption) -> None:
    """List an account's sources (never their credentials)."""
    with session() as s:
        views = [_view(src) for src in sources.list_for(s, account_id)]
    if as_json:
        emit_json([v.model_dump(mode="json") for v in views])
        return
    if not views:
        typer.echo(f"account {account_id} has no sources; add one with `source add`")
    for v in views:
        until = v.previous_secret_expires_at
        typer.echo(f"{v.source_id}  {v.kind:<7}  {'enabled ' if v.enabled else 'disabled'}  "
                   f"created {v.created_at.date().isoformat()}  {v.name}"
                   + (f"  (old secret valid until {until.isoformat(timespec='minutes')})"
                      if until else ""))


@source_app.command("rotate")
def source_rotate(source_id: str,
                  token: bool = typer.Option(False, "--token",
                                             help="Also issue a new bearer token; the old "
                                                  "token stops working at once."),
                  as_json: bool = JsonOption) -> None:
    """Give a source a new secret; the old one keeps verifying for 24 hours."""
    with session() as s:
        rotated = sources.rotate(s, source_id, now=runtime.now(), token=token)
        creds = SourceCredentials(
            source_id=rotated.source.id, kind=rotated.source.kind, secret=rotated.secret,
            token=rotated.token,
            previous_secret_expires_at=rotated.source.previous_secret_expires_at)
    if as_json:
        emit_json(creds.model_dump(mode="json", exclude_none=True))
        return
    until = creds.previous_secret_expires_at
    typer.echo(f"source {source_id}: new secret {creds.secret}\n"
               f"  the old secret keeps working until "
               f"{until.isoformat(timespec='seconds') if until else '-'}")
    if creds.token:
        typer.echo(f"  new token {creds.token} (the old token no longer works)")


@source_app.command("disable")
def source_disable(source_id: str, as_json: bool = JsonOption) -> None:
    """Stop a source: its webhooks answer 410 from now on."""
    with session() as s:
        view = _view(sources.disable(s, source_id))
    if as_json:
        emit_json(view)
    else:
        typer.echo(f"source {source_id} is disabled")
