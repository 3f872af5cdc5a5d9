"""The ``casecredits`` CLI as an operator uses it: a real process, a real database."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from schemas.messages import CONSUMED_QUEUES
from tests.procs import ROOT, cli
from worker import procfile, runtime
from worker.cli import run


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def incli(capsys, monkeypatch):
    """Run the CLI in this process (fast); the subprocess tests below cover the real thing."""

    def call(*args: str, env: dict[str, str]) -> Result:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        runtime.reset()
        capsys.readouterr()
        code = run(list(args))
        out = capsys.readouterr()
        runtime.reset()
        return Result(code, out.out, out.err)

    return call


@pytest.fixture
def env(db_url, tmp_path, incli):
    env = {"DATABASE_URL": db_url, "VAR_DIR": str(tmp_path / "var"), "LOG_FORMAT": "json"}
    assert incli("db", "upgrade", env=env).returncode == 0
    return env


@pytest.fixture
def ok(incli):
    def call(*args: str, env: dict[str, str]) -> str:
        result = incli(*args, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout

    return call


def test_contract_commands(env, ok):
    ok("plan", "add", "pro", "--monthly", "3", env=env)
    ok("plan", "add", "enterprise", "--unlimited", env=env)
    plans = json.loads(ok("plan", "list", "--json", env=env))
    assert plans == [{"code": "enterprise", "monthly_allowance": None, "unlimited": True},
                     {"code": "pro", "monthly_allowance": 3, "unlimited": False}]
    ok("account", "add", "acme", "--plan", "pro", "--timezone", "America/Chicago", env=env)
    ok("credits", "buy", "acme", "2", "--ref", "pay-1", env=env)
    ok("credits", "buy", "acme", "2", "--ref", "pay-1", env=env)  # the same purchase again
    ok("credits", "adjust", "acme", "-1", "--bucket", "monthly", "--reason", "goodwill undo",
       env=env)
    shown = json.loads(ok("credits", "show", "acme", "--json", env=env))
    assert set(shown) >= {"account_id", "plan", "unlimited", "period", "monthly_allowance",
                          "monthly_remaining", "extra_remaining", "total_available",
                          "renews_at"}
    assert (shown["plan"], shown["monthly_allowance"], shown["monthly_remaining"],
            shown["extra_remaining"], shown["total_available"]) == ("pro", 3, 2, 2, 4)
    assert shown["renews_at"].endswith("Z") or shown["renews_at"].endswith("+00:00")
    history = json.loads(ok("credits", "history", "acme", "--json", env=env))
    assert [e["kind"] for e in history["entries"]] == ["adjustment", "purchase", "grant"]
    assert history["entries"][0]["reason"] == "goodwill undo"
    assert history["entries"][0]["actor"]
    ok("account", "add", "big", "--plan", "enterprise", env=env)
    big = json.loads(ok("credits", "show", "big", "--json", env=env))
    assert (big["unlimited"], big["monthly_allowance"], big["monthly_remaining"]) == (
        True, None, None)
    assert "ok" in ok("ledger", "verify", env=env)


@pytest.mark.parametrize("args,message", [
    (("credits", "show", "nobody"), "no account 'nobody'"),
    (("account", "add", "a", "--plan", "nope"), "no plan 'nope'"),
    (("account", "add", "a", "--plan", "pro", "--timezone", "Mars/Olympus"), "unknown time zone"),
    (("credits", "adjust", "a", "-5", "--bucket", "extra", "--reason", "x"), "below zero"),
    (("credits", "buy", "nobody", "1", "--ref", "p"), "no account 'nobody'"),
    (("event", "show", "a", "evt_missing"), "no event"),
    (("plan", "add", "pro", "--monthly", "4"), "exists with other terms"),
])
def test_a_users_mistake_is_one_line(env, ok, incli, args, message):
    ok("plan", "add", "pro", "--monthly", "3", env=env)
    ok("account", "add", "a", "--plan", "pro", env=env)
    result = incli(*args, env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr


def test_a_real_process_shows_no_traceback(sqlite_url, tmp_path):
    env = {"DATABASE_URL": sqlite_url, "VAR_DIR": str(tmp_path)}
    for args in (("credits", "show", "nobody"), ("account", "add", "a", "--plan", "nope")):
        result = cli(*args, env=env)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_ledger_verify_lists_accounts_that_differ(env, ok, incli, db_url):
    ok("plan", "add", "pro", "--monthly", "3", env=env)
    ok("account", "add", "a", "--plan", "pro", env=env)
    from sqlalchemy import text

    from db.engine import make_engine

    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE balances SET monthly_remaining = 9"))
    engine.dispose()
    result = incli("ledger", "verify", env=env)
    assert result.returncode == 1 and "a monthly: balance 9, ledger 3" in result.stdout


def test_database_urls_as_hosting_platforms_give_them(pg_url, tmp_path, ok):
    rest = pg_url.split("://", 1)[1]
    for scheme in ("postgres", "postgresql", "postgresql+psycopg2", "postgresql+psycopg"):
        env = {"DATABASE_URL": f"{scheme}://{rest}", "VAR_DIR": str(tmp_path)}
        ok("db", "upgrade", env=env)
        assert json.loads(ok("plan", "list", "--json", env=env)) == []


def test_embedded_defaults_need_no_configuration(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL",
                                                             "VAR_DIR")}
    run = subprocess.run(["casecredits", "db", "upgrade"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=False, timeout=60)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "var" / "casecredits.db").exists()


def test_schemas_export_writes_every_message(tmp_path, ok):
    ok("schemas", "export", str(tmp_path / "out"), env={})
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    for actor in ("create_manual_profile", "upsert_account", "purchase_credits",
                  "profile_outcome", "ingest_lead"):
        assert f"{actor}.schema.json" in names
    schema = json.loads((tmp_path / "out" / "create_manual_profile.schema.json").read_text())
    assert set(schema["required"]) == {"request_id", "account_id", "created_by", "occurred_at",
                                       "client"}


def test_procfile_has_every_process_and_the_worker_consumes_every_queue():
    processes = procfile.read(Path(ROOT) / "Procfile")
    assert set(processes) == {"web", "worker", "scheduler", "release"}
    assert processes["release"] == "casecredits db upgrade"
    for queue in CONSUMED_QUEUES:
        assert f" {queue}" in processes["worker"]
