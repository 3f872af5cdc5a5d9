"""``casecredits dev``: the whole service in one command, on the embedded defaults."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import typer

from db.migrate import upgrade
from worker import embedded, procfile
from worker.settings import get_settings

#: seconds the processes get to finish in-flight work after Ctrl-C
STOP_GRACE_S = 20.0


def register(app: typer.Typer) -> None:
    app.command("dev")(dev)
    app.command("scheduler")(scheduler)


def scheduler() -> None:
    """Run the scheduler process (the Procfile's ``scheduler`` line)."""
    from worker import scheduler as sched

    sched.run()


def dev(port: int = typer.Option(8000, "--port", help="HTTP port of the web process."),
        processes: int = typer.Option(1, "--processes", help="Worker processes."),
        threads: int = typer.Option(4, "--threads", help="Threads per worker process.")) -> None:
    """Run web, worker and scheduler from the Procfile, with readable logs; Ctrl-C stops."""
    settings = get_settings()
    env = dict(os.environ)
    # the Procfile names uvicorn, dramatiq and casecredits: find ours without `activate`
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("LOG_FORMAT", "console")
    env["PORT"] = str(port)
    env["WORKER_PROCESSES"] = str(processes)
    env["WORKER_THREADS"] = str(threads)
    started_redis = False
    if settings.embedded_redis:
        started_redis = not embedded.socket_path(settings.var_dir).exists()
        env["REDIS_URL"] = embedded.ensure_running(settings.var_dir)
    env["DATABASE_URL"] = settings.effective_database_url
    typer.echo(f"database: {env['DATABASE_URL']}\nbroker:   {env['REDIS_URL']}")
    upgrade(env["DATABASE_URL"])
    children: dict[str, subprocess.Popen[bytes]] = {}
    for name, command in procfile.read().items():
        if name == "release":
            continue
        typer.echo(f"starting {name}: {command}")
        # Procfile lines are shell commands (${PORT:-8000}); they come from our own file.
        # ``exec`` so that the process we wait for is the server, not a shell around it
        children[name] = subprocess.Popen(f"exec {command}", shell=True,  # noqa: S602
                                          env=env,
                                          start_new_session=True)
    typer.echo(f"casecredits is up: http://127.0.0.1:{port}/healthz  (Ctrl-C stops)")
    stopping = False

    def _stop(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    typer.echo(f"{name} exited with {child.returncode}; stopping", err=True)
                    stopping = True
            time.sleep(0.2)
    finally:
        _terminate(children)
        if started_redis:
            embedded.stop(settings.var_dir)
    code = max((c.returncode or 0 for c in children.values()), default=0)
    sys.exit(0 if code in (0, -signal.SIGTERM, 128 + signal.SIGTERM) else code)


def _terminate(children: dict[str, subprocess.Popen[bytes]]) -> None:
    # Only the leader: dramatiq's main process forwards the signal to its workers,
    # and a worker that hears it twice stops hard instead of finishing its messages.
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        # dramatiq's forked worker processes may outlive their parent by a moment
        while _group_alive(child.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _group_alive(child.pid):
            os.killpg(child.pid, signal.SIGKILL)
    typer.echo("stopped")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
