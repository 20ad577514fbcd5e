"""Group commit of notifications (tracker/intake/batcher.py) on a real SQLite file, and the
webhook's own ASGI endpoint in front of quart."""

from __future__ import annotations

import sqlite3
from zoneinfo import ZoneInfo

import pytest
import trio

from tests.support import open_system
from tracker.core import statecharts
from tracker.core.calls import Call
from tracker.core.catalogue import EVENTS
from tracker.db.store import Store
from tracker.errors import RejectedNotification
from tracker.intake.batcher import Intake

CHART = statecharts.load_all(statecharts.DEFAULT_DIR, Call, EVENTS)["call"]


def _incoming(session: int, **extra: object) -> dict[str, object]:
    return {"event": "incoming_call", "call_session_id": session,
            "contact_phone_number": "79991234567", **extra}




def _count(store: Store, sql: str) -> int:
    return int(store.conn.execute(sql).fetchone()[0])


async def _submit_together(intake: Intake, bodies: list[dict[str, object]]
                           ) -> list[object]:
    """Submit every body in the same scheduler pass; each result is an Outcome or the error."""
    results: list[object] = [None] * len(bodies)

    async def one(index: int) -> None:
        try:
            results[index] = await intake.submit(bodies[index], "POST")
        except Exception as exc:
            results[index] = exc

    async with trio.open_nursery() as nursery:
        for index in range(len(bodies)):
            nursery.start_soon(one, index)
    return results


async def test_notifications_that_arrive_together_share_one_commit(store):
    intake = Intake(store, CHART, ZoneInfo("Europe/Moscow"))
    async with trio.open_nursery() as nursery:
        await nursery.start(intake.run_writer)
        results = await _submit_together(intake, [_incoming(100 + i) for i in range(20)])
        nursery.cancel_scope.cancel()
    assert [r.status for r in results] == ["accepted"] * 20  # type: ignore[attr-defined]
    stats = intake.statistics()
    assert stats.notifications == 20 and stats.batches < 20 and stats.largest_batch > 1
    assert _count(store, "SELECT count(*) FROM calls") == 20


async def test_a_rejected_notification_spoils_nothing_else_in_its_batch(store):
    intake = Intake(store, CHART, ZoneInfo("Europe/Moscow"))
    async with trio.open_nursery() as nursery:
        await nursery.start(intake.run_writer)
        results = await _submit_together(intake, [
            _incoming(1), {"event": "incoming_call"}, _incoming(2),
            {"event": "talk_started", "call_session_id": "abc"}])
        nursery.cancel_scope.cancel()
    assert results[0].status == results[2].status == "accepted"  # type: ignore[attr-defined]
    assert isinstance(results[1], RejectedNotification) and results[1].field == "call_session_id"
    assert isinstance(results[3], RejectedNotification)
    assert intake.statistics().batches == 1
    assert _count(store, "SELECT count(*) FROM calls") == 2
    assert _count(store, "SELECT count(*) FROM events WHERE outcome = 'rejected'") == 2


async def test_a_failed_commit_fails_the_whole_batch_and_stores_none_of_it(store):
    # A deferred foreign key is checked at COMMIT: a real commit failure, set off by one body.
    store.conn.executescript("""
        CREATE TABLE poison (ref INTEGER REFERENCES calls(id) DEFERRABLE INITIALLY DEFERRED);
        CREATE TRIGGER poison_on AFTER INSERT ON events WHEN NEW.body LIKE '%poison%'
        BEGIN INSERT INTO poison VALUES (-1); END;
    """)
    intake = Intake(store, CHART, ZoneInfo("Europe/Moscow"))
    async with trio.open_nursery() as nursery:
        await nursery.start(intake.run_writer)
        results = await _submit_together(intake, [
            _incoming(1), _incoming(2, note="poison"), _incoming(3)])
        assert all(isinstance(r, sqlite3.IntegrityError) for r in results), results
        assert _count(store, "SELECT count(*) FROM events") == 0
        assert _count(store, "SELECT count(*) FROM calls") == 0
        # the connection is usable again: the next batch commits
        again = await _submit_together(intake, [_incoming(1), _incoming(3)])
        nursery.cancel_scope.cancel()
    assert [r.status for r in again] == ["accepted", "accepted"]  # type: ignore[attr-defined]
    assert _count(store, "SELECT count(*) FROM calls") == 2


async def test_what_is_queued_when_the_writer_stops_is_still_written(store):
    results: list[object] = []
    caught_queued = False
    # trio runs ready tasks in an order of its choosing: repeat until the three submissions
    # were queued before this task ran again, then stop the writer right there.
    for attempt in range(60):
        intake = Intake(store, CHART, ZoneInfo("Europe/Moscow"))

        async def submit(session: int) -> None:
            results.append(await intake.submit(_incoming(session), "POST"))  # noqa: B023

        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as writer:
                await writer.start(intake.run_writer)
                for session in range(3):
                    outer.start_soon(submit, attempt * 10 + session)
                await trio.lowlevel.checkpoint()
                if intake.statistics().queued == 3:  # queued; the writer has not run yet
                    caught_queued = True
                writer.cancel_scope.cancel()
        if caught_queued:
            break
    assert caught_queued
    assert len(results) == 3 * (attempt + 1)
    assert _count(store, "SELECT count(*) FROM calls") == 3 * (attempt + 1)
    # without its writer the intake still works, one transaction per notification
    assert (await intake.submit(_incoming(999), "POST")).status == "accepted"


def test_a_nested_transaction_is_a_savepoint(store):
    with store.transaction():
        store.conn.execute("INSERT INTO calls (id, state) VALUES (1, 'ringing')")
        with pytest.raises(RuntimeError):
            with store.transaction():
                store.conn.execute("INSERT INTO calls (id, state) VALUES (2, 'ringing')")
                raise RuntimeError("undo the inner writes only")
        with store.transaction():
            store.conn.execute("INSERT INTO calls (id, state) VALUES (3, 'ringing')")
    assert [r[0] for r in store.conn.execute("SELECT id FROM calls ORDER BY id")] == [1, 3]


async def test_concurrent_notifications_over_http_are_each_committed_before_their_200(tmp_path):
    with trio.fail_after(30):
        async with open_system(tmp_path) as d:
            answers: list[int] = []

            async def post(session: int) -> None:
                response = await d.post(_incoming(session))
                answers.append(response.status_code)

            async with trio.open_nursery() as nursery:
                for session in range(1, 41):
                    nursery.start_soon(post, session)
            assert answers == [200] * 40
            assert d.count("calls") == 40
            assert d.ctx.intake.statistics().notifications == 40


async def test_the_notification_endpoint_refuses_other_methods_with_405(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            for method in ("PUT", "DELETE", "PATCH", "HEAD"):
                response = await d.client.request(method, d.webhook, content=b"{}")
                assert response.status_code == 405, method
                assert response.headers["allow"] == "GET, POST"
                if method != "HEAD":
                    assert response.json()["error"] == "method_not_allowed"
            wrong = await d.client.put(f"{d.url}/webhooks/uis/wrong-secret-0123456789")
            assert wrong.status_code == 404  # a wrong secret is never told apart by method
            assert d.count("events") == 0

