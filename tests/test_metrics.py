"""GET /metrics against the real daemon, and the call id on every JSON log line about a call."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import prometheus_client
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ANNA, BORIS, CRM_KEY, Daemon, open_system, start_time
from tracker import logs
from tracker.db import keys
from tracker.errors import PermanentDelivery, RetryableDelivery
from tracker.metrics import error_kind
from tracker.simulators import scenarios

SESSION = 998677427
OTHER = 998677500

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(d: Daemon, **headers: str) -> Samples:
    response = await d.client.get(f"{d.url}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def family(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def labels(**pairs: str) -> frozenset[tuple[str, str]]:
    return frozenset(pairs.items())


async def test_a_call_counts_notifications_transitions_and_deliveries(tmp_path):
    with trio.fail_after(30):
        async with open_system(tmp_path) as d:
            scenario = scenarios.answered(SESSION, start=start_time(), employee=ANNA)
            await d.play(scenario)
            await d.sims.uis.send_notification(scenario.notifications[0], d.webhook, d.client)
            await d.post({"event": "sms_received", "call_session_id": 5})
            await d.post({"event": "incoming_call", "call_session_id": "abc"})
            samples = await scrape(d)
            assert family(samples, "tracker_notifications_total") == {
                **{labels(event=n.event, outcome="accepted"): 1.0
                   for n in scenario.notifications},
                labels(event="incoming_call", outcome="duplicate"): 1.0,
                labels(event="other", outcome="ignored"): 1.0,
                labels(event="incoming_call", outcome="rejected"): 1.0,
            }
            assert family(samples, "tracker_transitions_total") == {
                labels(from_state="ringing", to_state="waiting_answer"): 1.0,
                labels(from_state="waiting_answer", to_state="talking"): 1.0,
                labels(from_state="talking", to_state="ended"): 1.0,
            }
            assert family(samples, "tracker_outbox_finished_total") == {
                labels(action=a, status="delivered"): 1.0 for a in ("popup", "hangup", "upload")}
            for action in ("popup", "hangup", "upload"):
                assert value(samples, "tracker_delivery_latency_seconds_count", action=action) == 1
                assert value(samples, "tracker_delivery_latency_seconds_bucket", action=action,
                             le="+Inf") == 1
            assert family(samples, "tracker_upstream_errors_total") == {}
            assert family(samples, "tracker_outbox_rows") == {
                labels(status=s): 0.0 for s in ("pending", "retrying", "dead")}
            assert value(samples, "tracker_outbox_oldest_pending_age_seconds") == 0
            assert family(samples, "tracker_calls_in_progress") == {
                labels(state=s): 0.0 for s in ("ringing", "waiting_answer", "talking")}
            assert value(samples, "tracker_start_time_seconds") == pytest.approx(
                d.ctx.lifecycle.started_at)


async def test_an_outage_shows_as_depth_age_and_upstream_errors_by_kind(tmp_path):
    with trio.fail_after(30):
        async with open_system(tmp_path) as d:
            await d.post({"event": "incoming_call", "call_session_id": OTHER})  # stays live
            d.sims.crm.fail_next("429", count=1)
            d.sims.crm.fault = "503"
            await d.play(scenarios.lost_in_ivr(SESSION, start=start_time()), settle=False)
            # the 4th request means the 3rd answer was handled: one lane, one row at a time
            await d.sims.crm.wait_for(lambda: len(d.sims.crm.requests) >= 4)
            samples = await scrape(d)
            assert value(samples, "tracker_outbox_rows", status="pending") == 1
            assert value(samples, "tracker_outbox_rows", status="retrying") == 1
            assert value(samples, "tracker_outbox_oldest_pending_age_seconds") > 0
            errors = family(samples, "tracker_upstream_errors_total")
            assert errors[labels(action="upload", kind="rate_limited")] == 1
            assert errors[labels(action="upload", kind="server_error")] >= 2
            assert value(samples, "tracker_calls_in_progress", state="ringing") == 1
            d.sims.crm.fault = None
            await d.sims.crm.wait_for(lambda: d.uploads_for(SESSION))
            await d.settle()
            samples = await scrape(d)
            assert value(samples, "tracker_outbox_rows", status="pending") == 0
            assert value(samples, "tracker_outbox_finished_total", action="upload",
                         status="delivered") == 1
            latency = value(samples, "tracker_delivery_latency_seconds_sum", action="upload")
            assert latency > 0.05  # it waited through the retries
            # a refusal for good: a dead letter, counted as rejected
            d.sims.crm.api_key = "rotated"
            await d.play(scenarios.lost_in_ivr(SESSION + 1, start=start_time()))
            d.sims.crm.api_key = CRM_KEY
            samples = await scrape(d)
            assert value(samples, "tracker_upstream_errors_total", action="upload",
                         kind="rejected") == 1
            assert value(samples, "tracker_outbox_finished_total", action="upload",
                         status="dead") == 1
            assert value(samples, "tracker_outbox_rows", status="dead") == 1


def test_error_kinds() -> None:
    import httpx

    def caused(exc: Exception, cause: Exception) -> Exception:
        exc.__cause__ = cause
        return exc

    cases = [
        (caused(RetryableDelivery("x"), httpx.ReadTimeout("slow")), "timeout"),
        (caused(RetryableDelivery("x"), httpx.ConnectError("refused")), "transport"),
        (RetryableDelivery("x", status=429), "rate_limited"),
        (RetryableDelivery("x", detail="limit_exceeded"), "rate_limited"),
        (RetryableDelivery("x", status=503), "server_error"),
        (RetryableDelivery("x", status=200), "bad_answer"),
        (PermanentDelivery("x", status=400), "rejected"),
        (KeyError("bug"), "internal"),
    ]
    assert [error_kind(exc) for exc, _ in cases] == [kind for _, kind in cases]


async def test_each_daemon_has_its_own_registry(tmp_path):
    with trio.fail_after(30):
        async with open_system(tmp_path / "a") as a, open_system(tmp_path / "b") as b:
            await a.play(scenarios.lost_in_ivr(SESSION, start=start_time()))
            assert value(await scrape(a), "tracker_notifications_total", event="incoming_call",
                         outcome="accepted") == 1
            assert family(await scrape(b), "tracker_notifications_total") == {}
            assert a.ctx.metrics.registry is not b.ctx.metrics.registry
            assert a.ctx.metrics is a.ctx.outbox.metrics  # one set of metrics per daemon
    names = {m.name for m in prometheus_client.REGISTRY.collect()}
    assert not any(name.startswith("tracker_") for name in names)


async def test_metrics_can_require_a_key(tmp_path):
    with trio.fail_after(30):
        async with open_system(tmp_path, admin={"metrics_require_key": True}) as d:
            reader = keys.create(d.ctx.store, "prometheus", ["calls:read"])[1]
            auditor = keys.create(d.ctx.store, "auditor", ["log:read"])[1]
            for headers in ({}, {"Authorization": f"Bearer {auditor}"},
                            {"Authorization": "Bearer trk_wrong"}):
                response = await d.client.get(f"{d.url}/metrics", headers=headers)
                assert response.status_code == 401, headers
                assert response.headers["WWW-Authenticate"] == "Bearer"
                assert "tracker_" not in response.text
            samples = await scrape(d, Authorization=f"Bearer {reader}")
            assert ("tracker_start_time_seconds", frozenset()) in samples


# -- logs ----------------------------------------------------------------------------------------


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.configure("INFO", "json")
    stream = io.StringIO()
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    try:
        yield stream
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


async def test_json_log_lines_about_a_call_carry_its_id(tmp_path, json_log: io.StringIO):
    with trio.fail_after(30):
        async with open_system(tmp_path) as d:
            d.sims.crm.fail_next("503", count=1)
            await d.play(scenarios.ring_group_answered(SESSION, start=start_time(),
                                                       ringing=[ANNA], employee=BORIS))
            await d.play(scenarios.lost_in_ivr(OTHER, start=start_time()))
            call_of_row = {row["id"]: row["call_id"] for row in d.ctx.store.conn.execute(
                "SELECT id, call_id FROM outbox")}
    lines: list[dict[str, Any]] = [json.loads(line) for line in json_log.getvalue().splitlines()]
    about_calls = [line for line in lines if line["logger"] in (
        "tracker.intake.ingest", "tracker.delivery.dispatcher", "tracker.delivery.handlers")]
    assert about_calls
    for line in about_calls:  # "call 998677427: ringing -> …" or "popup #3 delivered"
        found = re.search(r"^call (\d+):|^\w+ #(\d+)", line["message"])
        assert found, line
        expected = int(found[1]) if found[1] else call_of_row[int(found[2])]
        assert line["call_id"] == expected, line
    transitions = [line for line in about_calls if " -> " in line["message"]]
    assert [(line["call_id"], line["message"].split(": ")[1].split(" on ")[0])
            for line in transitions] == [
        (SESSION, "ringing -> waiting_answer"), (SESSION, "waiting_answer -> talking"),
        (SESSION, "talking -> ended"), (OTHER, "ringing -> lost")]
    deliveries = [line["message"] for line in about_calls
                  if line["logger"] == "tracker.delivery.dispatcher"]
    for row_id in call_of_row:  # one line when each action finished, whatever became of it
        finished = [m for m in deliveries if re.match(rf"^\w+ #{row_id} (delivered|dropped)", m)]
        assert len(finished) == 1, (row_id, deliveries)
    assert any(re.match(r"^popup #\d+ failed \(attempt 1\), retrying", m) for m in deliveries)


async def test_group_commits_checkpoints_and_the_integrity_verdict_are_measured(tmp_path):
    with trio.fail_after(30):
        async with open_system(tmp_path) as d:
            async def post(session: int) -> None:
                response = await d.post({"event": "incoming_call", "call_session_id": session})
                assert response.status_code == 200

            async with trio.open_nursery() as nursery:
                for session in range(1, 31):
                    nursery.start_soon(post, session)
            while d.ctx.checkpointer.statistics().checkpoints == 0:
                await trio.sleep(0.05)
            samples = await scrape(d)
            commits = value(samples, "tracker_intake_batch_size_count")
            assert value(samples, "tracker_intake_batch_size_sum") == 30
            assert 1 <= commits == d.ctx.intake.statistics().batches <= 30
            assert value(samples, "tracker_wal_checkpoints_total", outcome="ok") >= 1
            assert value(samples, "tracker_database_integrity_ok") == 1
            health = (await d.client.get(f"{d.url}/healthz")).json()["database"]
            assert health["integrity"] == "ok" and health["checkpoint_failures"] == 0
            assert health["notifications_committed"] == 30 and health["commits"] == commits


# -- latency buckets -----------------------------------------------------------------------------

# from 1 ms, so the 10 ms pop-up target shows on a dashboard; the tail above 10 s shows outages
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


async def test_every_latency_histogram_has_buckets_from_one_millisecond(tmp_path):
    with trio.fail_after(30):
        async with open_system(tmp_path) as d:
            d.sims.crm.answer_delay_seconds = 0.004  # a pop-up of about 5 ms
            await d.play(scenarios.lost_in_ivr(SESSION, start=start_time()))
            await d.play(scenarios.answered(OTHER, start=start_time(), employee=ANNA))
            response = await d.client.get(f"{d.url}/metrics")
            families = {f.name: f for f in text_string_to_metric_families(response.text)}
            latency = [f for name, f in families.items()
                       if f.type == "histogram" and name.endswith("_seconds")]
            assert [f.name for f in latency] == ["tracker_delivery_latency_seconds"]
            for histogram in latency:
                by_labels: dict[frozenset[tuple[str, str]], dict[str, float]] = {}
                sums: dict[frozenset[tuple[str, str]], float] = {}
                for sample in histogram.samples:
                    rest = frozenset((k, v) for k, v in sample.labels.items() if k != "le")
                    if sample.name.endswith("_bucket"):
                        by_labels.setdefault(rest, {})[sample.labels["le"]] = sample.value
                    elif sample.name.endswith("_sum"):
                        sums[rest] = sample.value
                assert by_labels, histogram.name
                for series, buckets in by_labels.items():
                    bounds = [float(le) for le in buckets if le != "+Inf"]
                    assert bounds[:len(LATENCY_BUCKETS)] == list(LATENCY_BUCKETS), series
                    assert all(b > 10 for b in bounds[len(LATENCY_BUCKETS):]), series
                popup = by_labels[labels(action="popup")]
                assert popup["+Inf"] == 1
                seconds = sums[labels(action="popup")]
                assert 0.004 <= seconds < 10
                # the one pop-up sits in the smallest bucket that holds it, and that bucket is
                # at most 2.5 times its latency: a 5 ms pop-up is in le=0.005 or le=0.01
                first = min(float(le) for le, count in popup.items() if count == 1)
                assert first == min(b for b in LATENCY_BUCKETS if b >= seconds)
                assert first <= max(0.001, 2.5 * seconds), (seconds, popup)
