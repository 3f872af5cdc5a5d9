"""Helpers shared by the CLI modules: sessions, the clock, output."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from pydantic import BaseModel
from rich.console import Console
from sqlalchemy.orm import Session

from db.engine import session_scope
from worker import runtime

console = Console()

JsonOption = typer.Option(False, "--json", help="Print JSON for scripts.")


@contextmanager
def session() -> Iterator[Session]:
    with session_scope(runtime.sessions()) as s:
        yield s


def emit_json(value: BaseModel | dict[str, Any] | list[Any]) -> None:
    if isinstance(value, BaseModel):
        typer.echo(value.model_dump_json(indent=2))
    else:
        typer.echo(json.dumps(value, indent=2, default=str))
