"""``run.py bench``: measure the webhook path, pop-up latency, memory, backlog drain and start-up.

Everything runs on loopback in one invocation. The daemon under test is a real ``tracker serve``
subprocess; the load comes from ``tracker.devtools.loadgen`` subprocesses (their CPU is
reported, so one can see they are not the bottleneck); the simulators run in this process.
Figures are printed as one table with the targets beside them; nothing here asserts a timing.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from tracker.core.calls import FINAL_STATES
from tracker.db.store import Store
from tracker.simulators import CrmSimulator, UisSimulator
from tracker.web.httpserve import serve_app

SECRET = "bench-webhook-secret-0123456789"
START_TIMEOUT_SECONDS = 30  # a daemon that does not answer /healthz by then failed to start


@dataclass(frozen=True)
class Size:
    """How big each phase is: ``full`` for the real figures, ``quick`` to check it still works."""

    seconds: float  # of load on the ceiling, and as much on the daemon, over all rounds
    rounds: int
    connections: int
    loadgens: int
    popup_seconds: float
    live_calls: int
    backlog_calls: int
    journal_rows: int


FULL = Size(seconds=20, rounds=5, connections=24, loadgens=2, popup_seconds=10, live_calls=10_000,
            backlog_calls=10_000, journal_rows=1_000_000)
QUICK = Size(seconds=1.5, rounds=1, connections=8, loadgens=1, popup_seconds=1.5, live_calls=300,
             backlog_calls=300, journal_rows=20_000)


# -- the bare ceiling app --------------------------------------------------------------------


async def _bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The least an ASGI app can do for a POST: read the body, answer a small JSON."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    body = b'{"status":"accepted"}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def serve_ceiling(port: int) -> None:
    """Entry point of the ceiling subprocess."""
    trio.run(lambda: serve_app(_bare_app, f"127.0.0.1:{port}"))


# -- helpers ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _wait_http(url: str) -> float:
    """Seconds until ``url`` answers 200; ``trio.TooSlowError`` after START_TIMEOUT_SECONDS."""
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=2) as client:
        with trio.fail_after(START_TIMEOUT_SECONDS):
            while True:
                try:
                    if (await client.get(url)).status_code == 200:
                        return time.perf_counter() - started
                except httpx.TransportError:
                    pass
                await trio.sleep(0.01)


async def _loadgen(url: str, size: Size, seconds: float, first_session: int,
                   flow: str = "calls", max_requests: int | None = None) -> dict[str, Any]:
    """Run ``size.loadgens`` generator processes at once; sum their figures."""
    results: list[dict[str, Any]] = []

    async def one(index: int) -> None:
        command = [sys.executable, "-m", "tracker.devtools.loadgen", url,
                   "--connections", str(size.connections), "--duration", str(seconds),
                   "--first-session", str(first_session + index * 10_000_000), "--flow", flow]
        if max_requests is not None:
            command += ["--max-requests", str(max_requests // size.loadgens)]
        done = await trio.run_process(command, capture_stdout=True)
        results.append(json.loads(done.stdout))

    async with trio.open_nursery() as nursery:
        for index in range(size.loadgens):
            nursery.start_soon(one, index)
    seconds_max = max(r["seconds"] for r in results)
    return {
        "requests": sum(r["requests"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "rps": sum(r["requests"] for r in results) / seconds_max,
        "p50_ms": max(r["p50_ms"] for r in results),
        "p99_ms": max(r["p99_ms"] for r in results),
        "cpu": sum(r["cpu_seconds"] for r in results) / seconds_max,
    }


# The other phases measure the telephony alone; "crmwork" turns the CRM work on.
_CRM_WORK_OFF = """
[customers]
create = false

[tasks]
missed_calls = false
complete_on_reach = false

[attribution]
enabled = false
"""
# Customers and tasks wait behind retailCRM's 10 requests/s (crm_per_second; the telephony
# routes stay out of the way as in the other phases, or 50 cards/s would meet a 40/s budget);
# attribution stays off: it is a UIS lookup, not retailCRM work.
_CRM_WORK_ON = """
[customers]
create = true

[tasks]
missed_calls = true
complete_on_reach = true
fallback_performer_id = 1

[attribution]
enabled = false
"""


def _write_config(path: Path, port: int, db: Path, uis_url: str, crm_url: str,
                  crm_work: bool = False) -> None:
    path.write_text(f"""
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
max_body_bytes = 65536

[database]
path = "{db}"

[uis]
webhook_secret = "{SECRET}"
access_token = "bench-uis-token"
data_api_url = "{uis_url}/dataapi/v2.0"
call_api_url = "{uis_url}/callapi/v4.0"
record_wait_seconds = 0

[crm]
url = "{crm_url}"
api_key = "bench-crm-key"
client_id = "bench-client-id-0123456789"

[outbox]
retry_base_seconds = 0.2
retry_max_seconds = 1

[ratelimit]
# the phases measure tracker itself: retailCRM's own limit is enforced by the simulator where
# it matters (the backlog drain), so the daemon's limiter must not be the bottleneck here
crm_telephony_per_second = 1000
crm_per_second = 10
{_CRM_WORK_ON if crm_work else _CRM_WORK_OFF}
[log]
level = "ERROR"

[[employees]]
uis_id = 101
crm_user_id = 1
code = "101"
""", encoding="utf-8")


class _Daemon:
    """A ``run.py serve`` subprocess on a fresh port."""

    def __init__(self, tmp: Path, name: str, uis_url: str, crm_url: str, db: Path | None = None,
                 crm_work: bool = False):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.webhook = f"{self.url}/webhooks/uis/{SECRET}"
        self.db = db or tmp / f"{name}.db"
        self.config = tmp / f"{name}.toml"
        _write_config(self.config, self.port, self.db, uis_url, crm_url, crm_work)
        self.process: trio.Process | None = None

    async def start(self) -> float:
        self.process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "tracker", "serve", "--config", str(self.config)])
        return await _wait_http(f"{self.url}/healthz")

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(10):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


# -- the phases ------------------------------------------------------------------------------


@asynccontextmanager
async def _open_ceiling() -> AsyncIterator[str]:
    """The bare ASGI app in a process of its own; yields the URL to load."""
    port = _free_port()
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c",
         f"from tracker.devtools.bench import serve_ceiling; serve_ceiling({port})"])
    try:
        await _wait_for_port(port)
        yield f"http://127.0.0.1:{port}/webhooks/uis/x"
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(5):
            await process.wait()
        if process.returncode is None:
            process.kill()


async def _wait_for_port(port: int) -> None:
    with trio.fail_after(20):
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.aclose()
                return
            except OSError:
                await trio.sleep(0.02)


async def _ingest(tmp: Path, size: Size, uis_url: str, crm: CrmSimulator,
                  crm_url: str) -> tuple[dict[str, Any], dict[str, Any], list[float]]:
    """The ceiling and the daemon under the same load, in alternating rounds (the machine is
    shared: each ratio compares two runs a few seconds apart). Returns the ceiling's and the
    daemon's figures from their median rounds and every round's ratio."""
    crm.fault = "hang"  # deliveries wait: this phase measures the webhook path alone
    daemon = _Daemon(tmp, "ingest", uis_url, crm_url)
    await daemon.start()
    ceilings: list[dict[str, Any]] = []
    ingests: list[dict[str, Any]] = []
    seconds = size.seconds / size.rounds
    try:
        async with _open_ceiling() as ceiling_url:
            for round_ in range(size.rounds):
                ceilings.append(await _loadgen(ceiling_url, size, seconds, 1))
                cpu_before = _cpu_seconds(daemon.pid)
                result = await _loadgen(daemon.webhook, size, seconds,
                                        1 + round_ * 100_000_000)
                result["daemon_cpu"] = (_cpu_seconds(daemon.pid) - cpu_before) / seconds
                ingests.append(result)
        with contextlib.closing(Store(daemon.db)) as store:
            stored = store.count_events("accepted")
    finally:
        crm.fault = None
        await daemon.stop()
    ratios = [i["rps"] / c["rps"] if c["rps"] else 0.0
              for c, i in zip(ceilings, ingests, strict=True)]
    ingest = dict(sorted(ingests, key=lambda r: float(r["rps"]))[len(ingests) // 2])
    ingest["stored"] = stored
    ingest["requests_total"] = sum(r["requests"] for r in ingests)
    ceiling = sorted(ceilings, key=lambda r: float(r["rps"]))[len(ceilings) // 2]
    return ceiling, ingest, ratios


async def _post_raw(stream: trio.SocketStream, host: str, path: str, body: bytes) -> int:
    """One HTTP/1.1 POST on a kept-alive connection; the answer's status. Plain bytes: httpx
    spends milliseconds of CPU per request here, which would be measured as the daemon's."""
    await stream.send_all(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                          f"application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                          + body)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("the daemon closed the connection")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("the daemon closed the connection")
        rest += chunk
    return int(head.split(b" ", 2)[1])


async def _popup_latency(tmp: Path, size: Size, uis_url: str, crm: CrmSimulator,
                         crm_url: str) -> dict[str, Any]:
    """From the moment a waiting_answer notification is written to the daemon's socket to the
    moment the retailCRM simulator (in this process) handles the pop-up it caused."""
    daemon = _Daemon(tmp, "popup", uis_url, crm_url)
    await daemon.start()
    try:
        return await _measure_popups(daemon, size, crm, 900_000_000)
    finally:
        await daemon.stop()


async def _measure_popups(daemon: _Daemon, size: Size, crm: CrmSimulator,
                          first_session: int) -> dict[str, Any]:
    """Pop-up latency at 50 calls/s for ``size.popup_seconds`` against a running daemon."""
    sent: dict[str, float] = {}
    path = f"/webhooks/uis/{SECRET}"
    host = f"127.0.0.1:{daemon.port}"
    calls = int(50 * size.popup_seconds)
    started = time.perf_counter()

    async def call(index: int) -> None:
        session = first_session + index
        stream = await trio.open_tcp_stream("127.0.0.1", daemon.port)
        async with stream:
            await _post_raw(stream, host, path, json.dumps({
                "event": "incoming_call", "call_session_id": session,
                "contact_phone_number": "79991234567"}).encode())
            body = json.dumps({
                "event": "waiting_answer", "call_session_id": session, "employee_id": 101,
                "direction": "in", "contact_phone_number": "79991234567"}).encode()
            sent[str(session)] = time.perf_counter()
            await _post_raw(stream, host, path, body)

    async with trio.open_nursery() as nursery:
        for index in range(calls):
            nursery.start_soon(call, index)
            await trio.sleep_until(trio.current_time() + max(
                0.0, started + (index + 1) / 50 - time.perf_counter()))
    await crm.wait_for(lambda: len([s for s in sent if s in crm.arrivals]) >= calls,
                       timeout=30)
    latencies = sorted(crm.arrivals[s] - sent[s] for s in sent)
    return {"p50_ms": latencies[len(latencies) // 2] * 1000,
            "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000}


async def _memory(tmp: Path, size: Size, uis_url: str, crm: CrmSimulator,
                  crm_url: str) -> dict[str, Any]:
    daemon = _Daemon(tmp, "memory", uis_url, crm_url)
    await daemon.start()
    try:
        before = _rss_mb(daemon.pid)
        await _loadgen(daemon.webhook, size, 600, 500_000_000, flow="open",
                       max_requests=size.live_calls * 2)
        async with httpx.AsyncClient(timeout=5) as client:
            await client.get(f"{daemon.url}/healthz")
        with contextlib.closing(Store(daemon.db)) as store:
            live = sum(n for state, n in store.count_by_state().items()
                       if state not in FINAL_STATES)
        return {"live_calls": live, "rss_mb": _rss_mb(daemon.pid), "idle_rss_mb": before}
    finally:
        await daemon.stop()


async def _backlog(tmp: Path, size: Size, uis_url: str, crm: CrmSimulator,
                   crm_url: str) -> dict[str, Any]:
    crm.fault = "503"
    daemon = _Daemon(tmp, "backlog", uis_url, crm_url)
    await daemon.start()
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            for start in range(0, size.backlog_calls, 100):
                async with trio.open_nursery() as nursery:
                    for session in range(start, min(start + 100, size.backlog_calls)):
                        nursery.start_soon(partial_post, client, daemon.webhook, {
                            "event": "lost_call", "call_session_id": 700_000_000 + session,
                            "contact_phone_number": "79991234567", "wait_time_duration": 9})
        first = len(crm.requests)
        crm.rate_limit_per_second = 10
        crm.fault = None
        started = time.perf_counter()
        wanted = {str(700_000_000 + s) for s in range(size.backlog_calls)}
        await crm.wait_for(lambda: wanted <= crm.uploaded.keys(), timeout=3600)
        seconds = time.perf_counter() - started
        uploads = [r for r in crm.requests[first:]
                   if r.endpoint == "telephony/calls/upload" and r.status == 200]
        items = sum(len(r.data["calls"]) for r in uploads)
        refused = sum(1 for r in crm.requests[first:] if r.status != 200)
        return {"calls": size.backlog_calls, "seconds": seconds,
                "per_request": items / max(1, len(uploads)), "refused": refused}
    finally:
        crm.rate_limit_per_second = None
        crm.fault = None
        await daemon.stop()


async def _popup_under_crm_work(tmp: Path, size: Size, uis_url: str, crm: CrmSimulator,
                                crm_url: str) -> dict[str, Any]:
    """Pop-up latency while ``size.backlog_calls`` missed calls from as many new numbers wait
    with their uploads, customers and tasks behind retailCRM's 10 requests/s (the calls arrive
    faster than that work can leave): a card must not wait behind it."""
    daemon = _Daemon(tmp, "crmwork", uis_url, crm_url, crm_work=True)
    await daemon.start()
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            for start in range(0, size.backlog_calls, 100):
                async with trio.open_nursery() as nursery:
                    for session in range(start, min(start + 100, size.backlog_calls)):
                        nursery.start_soon(partial_post, client, daemon.webhook, {
                            "event": "lost_call", "call_session_id": 600_000_000 + session,
                            "contact_phone_number": f"7999{session:07d}",
                            "wait_time_duration": 9})

        def waiting() -> int:
            with contextlib.closing(Store(daemon.db)) as store:
                return store.pending_of_kinds("crm_")

        before = waiting()
        popup = await _measure_popups(daemon, size, crm, 910_000_000)
        popup.update(crm_rows_before=before, crm_rows_after=waiting(),
                     uploaded=sum(1 for k in crm.uploaded
                                      if 0 <= int(k) - 600_000_000 < size.backlog_calls))
        return popup
    finally:
        crm.fault = None
        await daemon.stop()


async def partial_post(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> None:
    response = await client.post(url, json=body)
    response.raise_for_status()


async def _startup(tmp: Path, size: Size, uis_url: str, crm_url: str) -> dict[str, Any]:
    db = tmp / "startup.db"
    with contextlib.closing(Store(db)) as store:
        store.migrate()
        body = json.dumps({"event": "incoming_call", "call_session_id": 1, "pad": "x" * 200})
        now = time.time()
        store.seed_events((now, i // 5, "incoming_call", "accepted", f"k{i}", "POST", body)
                          for i in range(size.journal_rows))
    # The first start finds no note of a clean stop (as after a crash): the full integrity check
    # runs before the daemon listens. The second start follows a clean stop: it runs in a thread.
    daemon = _Daemon(tmp, "startup", uis_url, crm_url, db=db)
    try:
        checked_first = await daemon.start()
    finally:
        await daemon.stop()
    try:
        seconds = await daemon.start()
    finally:
        await daemon.stop()
    return {"rows": size.journal_rows, "seconds": seconds, "checked_first": checked_first,
            "db_mb": db.stat().st_size / 2**20}


# -- the table -------------------------------------------------------------------------------


PHASES = ("ingest", "popup", "memory", "backlog", "startup", "crmwork")


async def run_bench(quick: bool, out: Any = print,
                    phases: tuple[str, ...] = PHASES) -> list[tuple[str, str, str]]:
    """Run the phases (all by default); print and return the table rows (metric, value, target).
    The durable ingest ratio needs the ceiling, measured with it."""
    size = QUICK if quick else FULL
    uis = UisSimulator("bench-uis-token")
    crm = CrmSimulator("bench-crm-key")
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="tracker-bench-") as name:
        tmp = Path(name)
        async with trio.open_nursery() as nursery:
            uis_url = await nursery.start(serve_app, uis.app)
            crm_url = await nursery.start(serve_app, crm.app)
            if "ingest" in phases:
                out(f"measuring the bare ceiling and durable ingest, {size.rounds} rounds each …")
                ceiling, ingest, ratios = await _ingest(tmp, size, uis_url, crm, crm_url)
                ratio = sorted(ratios)[len(ratios) // 2]
                rows.append(("bare ASGI ceiling (hypercorn trio)", f"{ceiling['rps']:.0f} req/s",
                             f"median round; load generator CPU {ceiling['cpu']:.2f} cores"))
                rows.append(("durable ingest", f"{ingest['rps']:.0f} notifications/s",
                             f"≥ 0.6 × ceiling: {ratio:.2f} × "
                             f"({'ok' if ratio >= 0.6 else 'MISSED'}); median of rounds "
                             + " ".join(f"{r:.2f}" for r in ratios)))
                rows.append(("webhook latency p50 / p99", f"{ingest['p50_ms']:.1f} / "
                             f"{ingest['p99_ms']:.1f} ms",
                             f"{size.connections * size.loadgens} connections; daemon CPU "
                             f"{ingest['daemon_cpu']:.2f}, load CPU {ingest['cpu']:.2f} cores"))
                rows.append(("committed before 200", f"{ingest['stored']} stored / "
                             f"{ingest['requests_total']} answered",
                             "errors: " + str(ingest["errors"])))
            if "popup" in phases:
                out("measuring pop-up latency at 50 calls/s …")
                popup = await _popup_latency(tmp, size, uis_url, crm, crm_url)
                rows.append(("pop-up latency p50 / p99 at 50 calls/s",
                             f"{popup['p50_ms']:.1f} / {popup['p99_ms']:.1f} ms",
                             f"p99 ≤ 10 ms ({'ok' if popup['p99_ms'] <= 10 else 'MISSED'})"))
            if "memory" in phases:
                out(f"measuring memory with {size.live_calls} calls in progress …")
                memory = await _memory(tmp, size, uis_url, crm, crm_url)
                rows.append((f"RSS with {memory['live_calls']} calls in progress",
                             f"{memory['rss_mb']:.0f} MB (idle {memory['idle_rss_mb']:.0f} MB)",
                             f"≤ 150 MB ({'ok' if memory['rss_mb'] <= 150 else 'MISSED'})"))
            if "backlog" in phases:
                out(f"measuring backlog drain of {size.backlog_calls} missed calls at 10 req/s …")
                backlog = await _backlog(tmp, size, uis_url, crm, crm_url)
                rows.append(("backlog drain: calls per upload request",
                             f"{backlog['per_request']:.1f} ({backlog['calls']} calls in "
                             f"{backlog['seconds']:.1f} s, {backlog['refused']} refused)",
                             f"≥ 45 ({'ok' if backlog['per_request'] >= 45 else 'MISSED'})"))
            if "crmwork" in phases:
                out(f"measuring pop-up latency under the CRM work of {size.backlog_calls} "
                    "missed calls …")
                work = await _popup_under_crm_work(tmp, size, uis_url, crm, crm_url)
                rows.append(("popup under crm work: p50 / p99",
                             f"{work['p50_ms']:.1f} / {work['p99_ms']:.1f} ms",
                             f"p99 ≤ 50 ms ({'ok' if work['p99_ms'] <= 50 else 'MISSED'}); "
                             f"{work['crm_rows_before']} → {work['crm_rows_after']} customer/"
                             f"task rows waiting, {work['uploaded']} uploads done"))
            if "startup" in phases:
                out(f"measuring start-up with {size.journal_rows} journal rows …")
                startup = await _startup(tmp, size, uis_url, crm_url)
                rows.append((f"start-up with {startup['rows']} journal rows "
                             f"({startup['db_mb']:.0f} MB)", f"{startup['seconds']:.2f} s",
                             f"≤ 2 s ({'ok' if startup['seconds'] <= 2 else 'MISSED'}); "
                             "after a clean stop, integrity check in a thread"))
                rows.append(("start-up after a crash, same file",
                             f"{startup['checked_first']:.2f} s",
                             "the full integrity check runs before listening"))
            nursery.cancel_scope.cancel()
    out("")
    out(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {'quick' if quick else 'full'} run")
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    out(f"{'metric'.ljust(width)}  {'value'.ljust(value_width)}  target / notes")
    for metric, value, target in rows:
        out(f"{metric.ljust(width)}  {value.ljust(value_width)}  {target}")
    return rows
