"""Operator commands for when something went wrong: the inbox sweeper and the dead letters.

``casecredits events sweep`` sends the leads left in the inbox again,
``casecredits dlq list`` shows the messages that exhausted their retries and
why, and ``casecredits dlq replay`` sends them again through the same
idempotent actors.
"""

from __future__ import annotations

import typer
from dramatiq.brokers.redis import RedisBroker
from rich.table import Table

from db import sweeper as inbox
from worker import broker as broker_mod
from worker import deadletters, logs, runtime, sweeper
from worker.cli.common import JsonOption, console, emit_json, session
from worker.settings import get_settings

events_app = typer.Typer(help="The inbox of received events.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead letters: messages that exhausted their retries.",
                      no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(events_app, name="events")
    app.add_typer(dlq_app, name="dlq")


def _broker() -> RedisBroker:
    """A plain broker on the configured Redis: no middleware, nothing started.

    Logs go to stderr from here on, so that ``--json`` output stays clean.
    """
    settings = get_settings()
    logs.configure(fmt=settings.log_format, level=settings.log_level)
    return RedisBroker(url=broker_mod.redis_url(settings), middleware=[],
                       namespace=settings.broker_namespace,
                       heartbeat_timeout=settings.heartbeat_timeout_ms,
                       dead_message_ttl=settings.dead_message_ttl_ms,
                       maintenance_chance=settings.maintenance_chance)


@events_app.command("sweep")
def events_sweep(older_than: int | None = typer.Option(
                     None, "--older-than", min=0,
                     help="Seconds a lead must have waited; default SWEEP_AFTER_S."),
                 as_json: bool = JsonOption) -> None:
    """Send `ingest_lead` again for leads still `received` whose message Redis lost."""
    settings = get_settings()
    broker = _broker()
    try:
        report = sweeper.sweep(runtime.sessions(), broker,
                               older_than_s=settings.sweep_after_s if older_than is None
                               else older_than, batch=settings.sweep_batch, now=runtime.now())
    finally:
        broker.client.close()
    if as_json:
        emit_json(report.view())
        return
    typer.echo(f"{report.checked} leads waiting over {report.older_than_s}s: "
               f"{len(report.enqueued)} sent again, {report.in_broker} still queued, "
               f"{report.dead_lettered} dead-lettered (see `casecredits dlq list`)")


@dlq_app.command("list")
def dlq_list(as_json: bool = JsonOption) -> None:
    """Dead-lettered messages of every queue the worker consumes, oldest first."""
    broker = _broker()
    try:
        letters = deadletters.list_dead(broker.client, broker.namespace)
    finally:
        broker.client.close()
    if as_json:
        emit_json([letter.view() for letter in letters])
        return
    if not letters:
        typer.echo("no dead letters")
        return
    table = Table("died", "queue", "actor", "message id", "retries", "ref", "reason")
    for letter in letters:
        table.add_row(letter.dead_at.isoformat(timespec="seconds"), letter.queue, letter.actor,
                      letter.message_id, str(letter.retries), letter.ref or "-",
                      letter.reason or "unknown (died before reasons were kept)")
    console.print(table)


@dlq_app.command("replay")
def dlq_replay(message_id: str | None = typer.Argument(None, help="The message to send again."),
               replay_all: bool = typer.Option(False, "--all", help=(
                   "Every dead letter, but those that died of an error a replay would meet "
                   "again (invalid message, unknown account, ...); name those one by one.")),
               as_json: bool = JsonOption) -> None:
    """Send dead letters again through the same idempotent actors, and drop them."""
    if replay_all == (message_id is not None):
        raise typer.BadParameter("give either a MESSAGE_ID or --all")
    broker = _broker()
    try:
        letters = deadletters.list_dead(broker.client, broker.namespace)
        if message_id is not None:
            letter = deadletters.find(letters, message_id)
            if letter is None:
                raise ValueError(f"no dead letter with message id {message_id!r}; "
                                 "see `casecredits dlq list`")
            chosen, skipped = [letter], []
        else:
            chosen = [letter for letter in letters if not letter.permanent]
            skipped = [letter for letter in letters if letter.permanent]
        for letter in chosen:
            if letter.actor == "ingest_lead" and letter.ref:
                with session() as s:
                    inbox.reopen_failed(s, letter.ref)
            deadletters.replay(broker, letter)
    finally:
        broker.client.close()
    if as_json:
        emit_json({"replayed": [letter.message_id for letter in chosen],
                   "skipped": [letter.message_id for letter in skipped]})
        return
    typer.echo(f"replayed {len(chosen)} dead letters"
               + (f"; left {len(skipped)} that would fail again (replay them by id)"
                  if skipped else ""))
