"""``run.py bench --quick`` keeps working (figures are printed, never asserted: shared machines)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_runs_every_phase_and_prints_the_table() -> None:
    done = subprocess.run([sys.executable, "run.py", "bench", "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout
    for metric in ("bare ASGI ceiling", "durable ingest", "webhook latency p50 / p99",
                   "pop-up latency", "calls in progress", "backlog drain", "start-up with",
                   "popup under crm work"):
        assert metric in table, table
    assert "errors: 0" in table, table


def test_bench_runs_only_the_phases_asked_for() -> None:
    done = subprocess.run([sys.executable, "run.py", "bench", "--quick", "--phase", "startup"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout
    assert "start-up with" in table and "start-up after a crash" in table, table
    for other in ("bare ASGI ceiling", "durable ingest", "pop-up latency", "backlog drain",
                  "popup under crm work"):
        assert other not in table, table
