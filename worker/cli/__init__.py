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


def run(argv: list[str] | None = None) -> int:
    """Run the app on ``argv``; return the exit code, known errors as one clear line."""
    try:
        # standalone mode: usage errors and --help are typer's, and it always exits
        app(args=argv, prog_name="casecredits")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except DomainError as exc:
        return _fail(str(exc))
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        return _fail(f"{where}: {first['msg']}" if where else first["msg"])
    except OperationalError as exc:
        return _fail(f"database unavailable: {str(exc.orig).strip().splitlines()[0]}")
    except ValueError as exc:
        return _fail(str(exc))
    return 0


def main() -> None:
    """The console script."""
    sys.exit(run())


def _fail(message: str) -> int:
    typer.echo(f"error: {message}", err=True)
    return 1
