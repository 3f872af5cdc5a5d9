"""``casecredits dev``: the README's run command, on embedded defaults, from a bare directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request

import pytest
import redis

from tests.factories import manual_payload
from tests.procs import ROOT, MainApp, wait_for

pytestmark = pytest.mark.timeout(180)


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (localhost)
            return int(response.status)
    except OSError:
        return 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_dev_runs_the_whole_service_on_embedded_defaults(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "VAR_DIR", "BROKER_NAMESPACE")}
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}:{env['PATH']}"
    port = _free_port()
    log = (tmp_path / "dev.log").open("wb")
    proc = subprocess.Popen(["casecredits", "dev", "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: _get(f"http://127.0.0.1:{port}/healthz") == 200, timeout=60,
                 what="web up")
        assert (tmp_path / "var" / "casecredits.db").exists()
        sock = tmp_path / "var" / "redis.sock"
        assert redis.Redis(unix_socket_path=str(sock)).ping()
        for args in (["plan", "add", "pro", "--monthly", "1"],
                     ["account", "add", "acme", "--plan", "pro"]):
            subprocess.run(["casecredits", *args], cwd=tmp_path, env=env, check=True,
                           capture_output=True, timeout=60)
        app = MainApp(f"unix://{sock}", "casecredits")
        app.send("profiles", "create_manual_profile", manual_payload("acme", "r-1"))
        app.send("profiles", "create_manual_profile", manual_payload("acme", "r-2"))
        outcomes = wait_for(lambda: len(app.outcomes()) == 2 and app.outcomes(), timeout=60,
                            what="two outcomes")
        assert sorted(o["status"] for o in outcomes) == ["created", "refused"]
        app.close()
        shown = subprocess.run(["casecredits", "credits", "show", "acme", "--json"],
                               cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=60, check=True)
        assert json.loads(shown.stdout)["total_available"] == 0
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    text = (tmp_path / "dev.log").read_text()
    assert code == 0, text[-3000:]
    assert "stopped" in text and "Traceback" not in text
    time.sleep(0.5)
    assert not sock.exists() or not _answers(sock)


def _answers(sock) -> bool:
    try:
        return bool(redis.Redis(unix_socket_path=str(sock), socket_timeout=1).ping())
    except redis.RedisError:
        return False
