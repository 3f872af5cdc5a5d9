"""The ``casecredits`` command.

Each area is a module with a typer app of its own, registered here. A user's
mistake (an unknown account, a bad time zone, a missing plan) prints one line
and exits non-zero; it never shows a traceback.
"""

from __future__ import annotations

import sys

import typer
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError

from db.errors import DomainError
from worker.cli import core, dev

app = typer.Typer(help="casecredits: case-credit metering for client profiles.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
core.register(app)
dev.register(app)
for _name in ("sources", "renew", "ops"):
    try:
        _module = __import__(f"worker.cli.{_name}", fromlist=["register"])
    except ModuleNotFoundError as _exc:
        if _exc.name != f"worker.cli.{_name}":
            raise
    else:
        _module.register(app)


def main() -> None:
    """Entry point: run the app, turning known errors into one clear line."""
    try:
        app()
    except DomainError as exc:
        _fail(str(exc))
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        _fail(f"{where}: {first['msg']}" if where else first["msg"])
    except OperationalError as exc:
        _fail(f"database unavailable: {str(exc.orig).strip().splitlines()[0]}")
    except ValueError as exc:
        _fail(str(exc))


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    sys.exit(code)
