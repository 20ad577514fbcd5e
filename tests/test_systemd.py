"""The systemd unit: ``systemd-analyze verify`` accepts it, ``systemd-analyze security`` scores it
2.0 or less, and the real daemon runs inside the sandbox it sets.

systemd is not PID 1 here, so the daemon cannot be started by the unit itself. Its parts are
applied by hand instead: W^X memory (``MemoryDenyWriteExecute``) through the kernel's
``PR_SET_MDWE``, no new privileges, the unit's umask; and the system call filter, the writable
paths and the /proc subset are checked on an ``strace`` of a daemon working through calls, the
admin API, the page and a clean stop: every system call it made must be one the unit's
``SystemCallFilter`` allows, every file it wrote must be in its state directory, and it must read
no /proc file but its own.

The tools come from Debian (``systemd`` for systemd-analyze, ``strace``); ``make test`` installs
them when missing. Without them these tests fail, saying which package is missing.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import trio

from tests.procs import ROOT, free_port, wait_healthy, write_config
from tests.support import ANNA, SECRET, open_sims, start_time
from tracker.cli import systemd
from tracker.simulators import scenarios

CONFIG = "/etc/tracker/tracker.toml"
MAX_EXPOSURE = 2.0
SESSION = 998677427


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    assert path, (f"{name} is missing: install the Debian package {package!r} "
                  "(`make test` does)")
    return path


def unit_file(tmp_path: Path, **kwargs: str) -> Path:
    path = tmp_path / "tracker.service"
    options = {"python": sys.executable, "workdir": str(ROOT), "config": CONFIG, **kwargs}
    path.write_text(systemd.unit(**options), encoding="utf-8")
    return path


def service_section(path: Path) -> dict[str, list[str]]:
    """The [Service] directives, each with every value it is given (in order)."""
    values: dict[str, list[str]] = {}
    section = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service" and "=" in line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values.setdefault(name, []).append(value)
    return values


def test_the_unit_verifies_and_its_exposure_is_two_or_less(tmp_path):
    analyze = tool("systemd-analyze", "systemd")
    path = unit_file(tmp_path)
    verified = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True,
                              timeout=60)
    assert verified.returncode == 0, verified.stderr
    assert "tracker.service" not in verified.stderr, verified.stderr  # no unknown directive
    scored = subprocess.run([analyze, "security", "--offline=yes", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert scored.returncode == 0, scored.stderr
    found = re.search(r"Overall exposure level for tracker\.service: (\d+\.\d+)", scored.stdout)
    assert found, scored.stdout
    assert float(found[1]) <= MAX_EXPOSURE, scored.stdout
    # the same with the interpreter in a home directory, where the home stays readable
    home = unit_file(tmp_path, python="/home/ops/tracker/.venv/bin/python")
    assert service_section(home)["ProtectHome"] == ["read-only"]
    scored = subprocess.run([analyze, "security", "--offline=yes", str(home)],
                            capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for tracker\.service: (\d+\.\d+)", scored.stdout)
    assert found and float(found[1]) <= MAX_EXPOSURE, scored.stdout


def test_the_unit_keeps_what_the_daemon_needs() -> None:
    text = systemd.unit(python="/opt/tracker/.venv/bin/python", workdir="/opt/tracker",
                        config=CONFIG)
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(text)
    service = unit["Service"]
    assert service["ProtectSystem"] == "strict" and service["StateDirectory"] == "tracker"
    assert service["ProtectHome"] == "yes"  # nothing of the install lives in a home
    # it must reach UIS and retailCRM: the network stays, only the families it uses
    assert service["RestrictAddressFamilies"] == "AF_INET AF_INET6 AF_UNIX"
    assert "PrivateNetwork" not in service and "IPAddressDeny" not in service
    assert service["CapabilityBoundingSet"] == "" and service["UMask"] == "0077"


# -- the daemon in the sandbox -------------------------------------------------------------------

# Applies what the unit would before exec'ing the daemon: prctl(PR_SET_MDWE,
# PR_MDWE_REFUSE_EXEC_GAIN) (kept across execve, as systemd's MemoryDenyWriteExecute), no new
# privileges, the umask; then writes the daemon's pid to the file named by argv[1].
WRAPPER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0 or libc.prctl(38, 1, 0, 0, 0) != 0:
    sys.exit("prctl failed: errno %d (PR_SET_MDWE needs Linux 6.3 or later)"
             % ctypes.get_errno())
os.umask(0o077)
with open(sys.argv[1], "w") as f:
    f.write(str(os.getpid()))
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def test_write_execute_memory_is_refused_under_the_wrapper() -> None:
    """The check can fail: a W+X mapping is refused once the wrapper's prctl is in force."""
    probe = ("import mmap\ntry:\n    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE"
             " | mmap.PROT_EXEC)\nexcept PermissionError:\n    print('refused')\n")
    done = subprocess.run([sys.executable, "-c", WRAPPER, os.devnull, "-c", probe],
                          capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "refused", (done.stdout, done.stderr)


def syscall_groups(analyze: str) -> dict[str, list[str]]:
    """systemd's system call groups: ``@name`` -> its members (calls and nested groups)."""
    listing = subprocess.run([analyze, "syscall-filter"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] = []
    for line in listing.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    calls: set[str] = set()
    for name in names:
        calls |= expand(groups[name], groups) if name.startswith("@") else {name}
    return calls


def allowed_syscalls(path: Path, analyze: str) -> set[str]:
    """What the unit's ``SystemCallFilter=`` lines let through (an allow list, then ~ removals)."""
    groups = syscall_groups(analyze)
    allowed: set[str] = set()
    for value in service_section(path)["SystemCallFilter"]:
        if value.startswith("~"):
            allowed -= expand(value[1:].split(), groups)
        else:
            allowed |= expand(value.split(), groups)
    return allowed


async def test_the_daemon_works_inside_the_units_sandbox(tmp_path):
    analyze = tool("systemd-analyze", "systemd")
    strace = tool("strace", "strace")
    allowed = allowed_syscalls(unit_file(tmp_path), analyze)
    assert {"read", "write", "openat", "epoll_wait", "connect"} <= allowed
    assert not {"setrlimit", "sched_setscheduler", "mount", "ptrace"} & allowed
    state = tmp_path / "state"
    state.mkdir()
    trace, pid_file = tmp_path / "strace.txt", tmp_path / "daemon.pid"
    errors = tmp_path / "stderr.txt"
    with trio.fail_after(120):
        async with open_sims() as sims:
            port = free_port()
            config = write_config(tmp_path / "tracker.toml", db=state / "tracker.db",
                                  uis_url=sims.uis_url, crm_url=sims.crm_url, port=port,
                                  admin={"allow_loopback_without_key": True})
            url = f"http://127.0.0.1:{port}"
            environment = dict(os.environ)  # the unit's Environment= lines
            for assignment in service_section(unit_file(tmp_path)).get("Environment", []):
                name, _, value = assignment.partition("=")
                environment[name] = value
            with errors.open("wb") as stderr:
                process = await trio.lowlevel.open_process(
                    [strace, "-f", "-qq", "-o", str(trace), sys.executable, "-c", WRAPPER,
                     str(pid_file), "run.py", "serve", "--config", str(config)], cwd=ROOT,
                    env=environment, stdout=subprocess.DEVNULL, stderr=stderr)
            try:
                async with httpx.AsyncClient(timeout=10) as client:
                    async with trio.open_nursery() as nursery:
                        async def died() -> None:
                            await process.wait()
                            raise AssertionError(
                                f"strace or the daemon exited ({process.returncode}) before "
                                "answering /healthz (is ptrace permitted here?): "
                                + errors.read_text(errors="replace")[-2000:])

                        nursery.start_soon(died)
                        await wait_healthy(client, url)
                        nursery.cancel_scope.cancel()
                    webhook = f"{url}/webhooks/uis/{SECRET}"
                    await sims.uis.play(scenarios.answered(SESSION, start=start_time(),
                                                           employee=ANNA), webhook, client)
                    await sims.uis.play(scenarios.lost_in_ivr(SESSION + 1, start=start_time()),
                                        webhook, client)
                    while len(sims.crm.calls_for(str(SESSION))) + len(
                            sims.crm.calls_for(str(SESSION + 1))) < 2:
                        await trio.sleep(0.05)
                    answer = (await client.post(f"{url}/api/v1", json={
                        "jsonrpc": "2.0", "id": 1, "method": "get.calls"})).json()
                    assert answer["result"]["metadata"]["total_items"] == 2, answer
                    assert (await client.get(f"{url}/metrics")).status_code == 200
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
                code = await process.wait()
            finally:
                if process.returncode is None:
                    process.kill()
    assert code == 0
    lines = trace.read_text(encoding="utf-8", errors="replace").splitlines()
    if os.geteuid() == 0:  # SQLite hands its -wal/-shm files to the database's owner only when
        # it runs as root (unixFchown); as User=tracker it never calls fchown
        lines = [line for line in lines if not re.match(r"\d+ +fchown\(\d+, 0, 0\)", line)]
    made = {m[1] for line in lines if (m := re.match(r"\d+ +(\w+)\(", line))}
    assert {"epoll_wait", "connect", "accept4"} & made, "the trace missed the daemon"
    assert made - allowed == set(), f"system calls the unit's filter refuses: {made - allowed}"
    killed = [line for line in lines if "--- SIGSYS" in line or "= -1 EPERM" in line]
    assert killed == [], killed
    # ProtectSystem=strict: files are written only in the state directory
    written = {m[1] for line in lines
               if (m := re.search(r'open(?:at)?\((?:AT_FDCWD, )?"([^"]+)", [^)]*O_(?:WRONLY|RDWR)',
                                  line))}
    assert f"{state}/tracker.db-wal" in written, written
    outside = {p for p in written if not p.startswith(f"{state}/")} - {
        str(pid_file), "/dev/null"}  # the wrapper's pid file; PrivateDevices keeps /dev/null
    assert outside == set(), outside
    # ProcSubset=pid, ProtectProc=invisible: the daemon reads only its own /proc entries
    ours = {m[1] for line in lines if (m := re.match(r"(\d+) ", line))}
    procs = {m[1] for line in lines if (m := re.search(r'"(/proc/[^"]*)"', line))}
    foreign = {p for p in procs
               if not (m := re.match(r"/proc/(self|thread-self|\d+)(/|$)", p))
               or m[1] not in ("self", "thread-self", *ours)}
    # prometheus_client's module-level ProcessCollector reads the boot time from /proc/stat at
    # import; hidden by ProcSubset=pid, the OSError leaves that collector (of the global
    # registry, which the daemon never serves) empty
    assert foreign <= {"/proc/stat"}, foreign
