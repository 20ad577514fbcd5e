"""The package installs anywhere: build the wheel, install it into a fresh virtual environment
outside the checkout, and run ``tracker demo`` and ``python -m tracker demo`` from elsewhere.

No network: the wheel goes in with ``--no-deps`` and the new environment reaches the
dependencies through a ``.pth`` line naming this environment's site-packages. A ``.pth`` line
only adds the directory to ``sys.path`` (the editable install's finder there is not run), and the
new environment's own site-packages comes first, so ``tracker`` is the wheel's.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.procs import ROOT

# What a source distribution holds: the package, its statecharts, and the project files.
SOURCES = ("pyproject.toml", "README.md", "tracker", "statecharts")


def _run(args: list[str | Path], *, timeout: float, **kwargs: Any) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, check=False, **kwargs)
    assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-4000:])
    return str(done.stdout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (outside the checkout) holding the wheel built from this checkout."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"  # a copy, so the build leaves no build/ or egg-info behind
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, source / name)
    wheels = base / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", wheels, source], timeout=300)
    [wheel] = wheels.glob("tracker-*.whl")
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], timeout=120)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q",
          "--no-index", wheel], timeout=300)
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        timeout=60).strip())
    (purelib / "tracker-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def _environ(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "TRACKER_CONFIG")
           and not k.startswith("COV_CORE") and not k.startswith("COVERAGE")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_tracker_and_its_statecharts_come_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    out = _run([installed / "bin" / "python", "-c",
                "import importlib.resources as r, tracker\n"
                "print(tracker.__file__)\n"
                "chart = r.files('tracker.statecharts').joinpath('call.json')\n"
                "print(chart)\n"
                "import json; print(json.loads(chart.read_text())['name'])\n"
                "from tracker.core import statecharts\n"
                "print(statecharts.DEFAULT_DIR)\n"],
               timeout=60, cwd=tmp_path, env=_environ(installed))
    module, chart, name, default_dir = out.split("\n")[:4]
    for path in (module, chart, default_dir):
        assert Path(path).is_relative_to(installed), (path, out)
        assert not Path(path).is_relative_to(ROOT), (path, out)
    assert name == "call"


def _demo_until_a_call_reaches_retailcrm(command: list[str | Path], venv: Path, cwd: Path,
                                         log: Path) -> None:
    with log.open("w") as out:
        proc = subprocess.Popen([str(c) for c in command], cwd=cwd, env=_environ(venv),
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        url = None
        while url is None:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            found = re.search(r"status page:\s+(http://\S+?)/\s", log.read_text())
            url = found.group(1) if found else None
            time.sleep(0.2)
        page = httpx.get(f"{url}/", timeout=10)
        assert page.status_code == 200, page.text[:500]
        assert "text/html" in page.headers["content-type"]
        # The demo prints what the retailCRM simulator accepted: a generated call got there.
        reached = r"accepted [1-9]\d* call events|[1-9]\d* calls in the history"
        while not re.search(reached, log.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        health = httpx.get(f"{url}/healthz", timeout=10)
        assert health.status_code == 200, health.text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert "Traceback" not in log.read_text(), log.read_text()[-4000:]


@pytest.mark.parametrize("how", ["console script", "python -m"])
def test_the_demo_runs_from_the_wheel(installed: Path, tmp_path: Path, how: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    program: list[str | Path] = ([installed / "bin" / "tracker"] if how == "console script"
                                 else [installed / "bin" / "python", "-m", "tracker"])
    _demo_until_a_call_reaches_retailcrm(
        [*program, "demo", "--listen", "127.0.0.1:0", "--calls-per-minute", "120"],
        installed, elsewhere, tmp_path / "demo.log")
