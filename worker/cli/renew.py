"""``casecredits renew``: the scheduled renewal, run at once from the command line."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from db import renewal
from worker import runtime
from worker.cli.common import JsonOption, console, emit_json, session


def register(app: typer.Typer) -> None:
    app.command("renew")(renew)


def parse_instant(text: str | None) -> datetime | None:
    """An aware instant from ISO 8601 text; without an offset it is taken as UTC.

    :raises typer.BadParameter: when the text is not an ISO 8601 instant.
    """
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"not an ISO 8601 instant: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def renew(at: str | None = typer.Option(None, "--at", metavar="ISO8601",
                                        help="Renew as of this instant (default: now; "
                                             "no offset means UTC)."),
          as_json: bool = JsonOption) -> None:
    """Renew every account whose month has ended, as the scheduled actor does."""
    now = parse_instant(at) or runtime.now()
    started = time.perf_counter()
    if as_json or not console.is_terminal:
        renewed = renewal.renew_due(runtime.sessions(), now=now)
    else:
        renewed = _with_progress(now)
    if as_json:
        emit_json({"renewed": renewed})
        return
    elapsed = time.perf_counter() - started
    typer.echo(f"renewed {renewed} account{'' if renewed == 1 else 's'} as of "
               f"{now.isoformat()} in {elapsed:.1f} s")


def _with_progress(now: datetime) -> int:
    with session() as s:
        due = renewal.count_due(s, now=now)
    columns = (TextColumn("renewing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("renew", total=due)
        return renewal.renew_due(runtime.sessions(), now=now,
                                 on_chunk=lambda n: progress.advance(task, n))
