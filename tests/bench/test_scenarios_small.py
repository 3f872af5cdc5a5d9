"""The benchmarks' scenarios at a small size, for their correctness checks only.

Each runs the script's own ``run`` (real PostgreSQL, Redis and Procfile
processes, as ``python -m bench.<name>`` does) and asserts what it checked:
counts, balances, ``ledger verify``, every 202 a stored event. No timing is
asserted here; the figures belong in ``bench/RESULTS.md``.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import balance, http, worker
from worker import embedded, procfile

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def services(pg_url: str, redis_url: str) -> None:
    """Skip, as the rest of the suite does, when PostgreSQL or Redis cannot be had."""


def test_worker_scenarios_count_and_balance_right(services: None) -> None:
    """200 creations over 20 accounts all created; 150 on one account holding 100:
    100 created (33 monthly, 67 extra), 50 refused; the reference actors' charges
    keep every balance equal to its ledger."""
    out = io.StringIO()
    code = worker.run(messages=200, accounts=20, hot_messages=150, hot_credits=100, out=out)
    text = out.getvalue()
    assert code == 0, text
    assert "hot account: 100 created, 50 refused (checked)" in text
    assert "ledger verify: ok: 21 accounts" in text
    assert "checks: ok" in text and "WRONG" not in text


def test_balance_reads_the_right_figures_at_any_ledger_size(services: None) -> None:
    out = io.StringIO()
    code = balance.run(small=100, large=5_000, reads=50, out=out)
    text = out.getvalue()
    assert code == 0, text
    assert "ledger-5000: 5000 ledger entries loaded" in text
    assert "ledger verify: ok: 2 accounts" in text and "checks: ok" in text


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (apt-get install wrk)")
def test_every_accepted_lead_is_a_stored_event(services: None) -> None:
    out = io.StringIO()
    code = http.run(seconds=2, connections=4, paced_connections=2, rounds=2, out=out)
    text = out.getvalue()
    assert code == 0, text
    assert "round 2 signed leads" in text and "ratio leads / healthz (median of 2)" in text
    assert "each one a stored event of the source" in text and "checks: ok" in text


def test_group_commit_bench_creates_everything_at_every_thread_count(services: None) -> None:
    """``python -m bench.group_commit`` at a small size: every creation created, ledger ok."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "bench.group_commit", "--messages", "120",
                           "--threads", "1,6"], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 6 threads: cpu per message" in done.stdout
    assert "ledger verify: ok: 500 accounts" in done.stdout and "checks: ok" in done.stdout


def test_importing_the_scripts_starts_no_embedded_redis(tmp_path: Path) -> None:
    """The scripts are imported by this suite and by each other: none may set up a broker,
    which with no ``REDIS_URL`` starts a redis-server under ``VAR_DIR`` that outlives the
    import (``bench.worker`` once did, through ``bench.noop_actors``, in the checkout's
    ``var/``)."""
    var = tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env["VAR_DIR"] = str(var)
    done = subprocess.run([sys.executable, "-c", "import bench.worker, bench.http, "
                           "bench.balance, bench.drill, bench.group_commit"],
                          cwd=procfile.ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    started = (var / "redis.sock").exists()
    embedded.stop(var)  # had one started, it must not outlive the test
    assert done.returncode == 0, done.stderr
    assert not started, "an import started the embedded Redis"
