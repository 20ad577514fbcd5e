"""A small HTTP/1.1 load generator for the benchmark: keep-alive connections, one process each.

It runs as its own process (``python -m tracker.devtools.loadgen``) so that the server under
test and the load do not share an interpreter; a single-threaded ``selectors`` loop drives many
connections, each sending realistic call flows (4–6 notifications per call, in order) and timing
every answer.
It prints one JSON line: requests, errors, latency percentiles, and its own CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import resource
import selectors
import socket
import sys
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

_ANSWERED = ("incoming_call", "waiting_answer", "talk_started", "talk_finished", "call_finished")
_LOST = ("incoming_call", "waiting_answer", "lost_call", "call_finished")


def flow(session_id: int, kind: str = "calls") -> Iterator[dict[str, object]]:
    """The notifications of one call: 3 in 4 calls are answered, the rest lost. ``open``: only
    the first two, so the call stays in progress."""
    answered = session_id % 4 != 0
    base = {"call_session_id": session_id, "contact_phone_number": f"7999{session_id % 10**7:07d}",
            "virtual_phone_number": "74950000000", "notification_time": "2024-05-17 14:03:27.123"}
    events = _ANSWERED if answered else _LOST
    for event in events[:2] if kind == "open" else events:
        body = {"event": event, **base}
        if event in ("waiting_answer", "talk_started"):
            body.update(employee_id=101, direction="in", leg_id=session_id * 10)
        if event == "talk_finished":
            body.update(employee_id=101, talk_time_duration=42)
        if event == "call_finished":
            body.update(talk_time_duration=42 if answered else 0, wait_time_duration=5,
                        total_time_duration=47 if answered else 5)
        if event == "lost_call":
            body.update(employee_ids=[101], wait_time_duration=20)
        yield body


def _request(host: str, path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class _Conn:
    def __init__(self, sock: socket.socket, bodies: Iterator[bytes]) -> None:
        self.sock = sock
        self.bodies = bodies
        self.buffer = b""
        self.started = 0.0
        self.pending = b""  # the request awaiting its answer, resent after a reconnect


def run(url: str, connections: int, duration: float, first_session: int,
        max_requests: int | None, kind: str = "calls") -> dict[str, object]:
    """Drive ``connections`` keep-alive connections for ``duration`` seconds."""
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path
    selector = selectors.DefaultSelector()
    latencies: list[float] = []
    errors = 0
    statuses: dict[int, int] = {}

    def bodies(offset: int) -> Iterator[bytes]:
        session = first_session + offset
        while True:
            for notification in flow(session, kind):
                yield json.dumps(notification).encode()
            session += connections

    def send_next(conn: _Conn) -> None:
        conn.started = time.perf_counter()
        conn.pending = _request(host, path, next(conn.bodies))
        conn.sock.sendall(conn.pending)

    def connect() -> socket.socket:
        sock = socket.create_connection((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    reconnects = 0
    for index in range(connections):
        conn = _Conn(connect(), bodies(index))
        selector.register(conn.sock, selectors.EVENT_READ, conn)
        send_next(conn)

    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    deadline = time.perf_counter() + duration
    done = 0
    while time.perf_counter() < deadline and (max_requests is None or done < max_requests):
        for key, _ in selector.select(timeout=0.5):
            conn = key.data
            try:
                chunk = conn.sock.recv(65536)
            except ConnectionError:
                chunk = b""
            if not chunk:
                # The server closed a kept-alive connection (hypercorn does so after 1,000
                # requests): the unanswered request was not handled, so send it again.
                selector.unregister(conn.sock)
                conn.sock.close()
                conn.sock, conn.buffer = connect(), b""
                selector.register(conn.sock, selectors.EVENT_READ, conn)
                conn.sock.sendall(conn.pending)
                reconnects += 1
                continue
            conn.buffer += chunk
            head, sep, rest = conn.buffer.partition(b"\r\n\r\n")
            if not sep:
                continue
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if len(rest) < length:
                continue
            conn.buffer = rest[length:]
            status = int(head.split(b" ", 2)[1])
            statuses[status] = statuses.get(status, 0) + 1
            if status != 200:
                errors += 1
            latencies.append(time.perf_counter() - conn.started)
            done += 1
            if max_requests is None or done < max_requests:
                send_next(conn)
    elapsed = duration - max(0.0, deadline - time.perf_counter())
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    for key in list(selector.get_map().values()):
        key.data.sock.close()  # each key's data is its connection
    latencies.sort()

    def pct(q: float) -> float:
        return (latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000
                if latencies else 0.0)

    return {
        "requests": len(latencies),
        "errors": errors,
        "reconnects": reconnects,
        "statuses": statuses,
        "seconds": elapsed,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "cpu_seconds": (cpu_after.ru_utime + cpu_after.ru_stime)
        - (cpu_before.ru_utime + cpu_before.ru_stime),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--first-session", type=int, default=1)
    parser.add_argument("--max-requests", type=int, default=None)
    parser.add_argument("--flow", choices=["calls", "open"], default="calls")
    args = parser.parse_args(argv)
    result = run(args.url, args.connections, args.duration, args.first_session, args.max_requests,
                 args.flow)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
