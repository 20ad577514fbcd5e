"""The outbox dispatcher's look-ups on a real SQLite file: only lane heads are ever due."""

from __future__ import annotations


def test_only_lane_heads_are_due_even_when_a_later_row_is_due_first(store):
    now = 1_000_000.0
    with store.transaction():
        # lane of call 1: its head waits for a retry, the row behind it is due now (an outage)
        head = store.enqueue(1, "popup", 0, {"n": 1}, now)
        store.conn.execute("UPDATE outbox SET next_at = ? WHERE id = ?", (now + 30, head))
        store.enqueue(1, "upload", 10, {"n": 2}, now)
        # lane of call 2: one upload, due now; lane of call 3: a card, due now
        upload = store.enqueue(2, "upload", 10, {"n": 3}, now)
        card = store.enqueue(3, "popup", 0, {"n": 4}, now)
        # a finished row does not hold its lane
        done = store.enqueue(4, "popup", 0, {"n": 5}, now)
        store.finish_outbox(done, "delivered", now)
        later = store.enqueue(4, "hangup", 0, {"n": 6}, now)
    assert [r["id"] for r in store.due_heads(now, set(), 10)] == [card, later, upload]
    assert [r["id"] for r in store.due_heads(now, {"call:3"}, 10)] == [later, upload]
    assert [r["id"] for r in store.due_heads(now, set(), 1)] == [card]
    assert store.next_due_at() == now
    with store.transaction():
        for row_id in (upload, card, later):
            store.finish_outbox(row_id, "delivered", now)
    assert store.due_heads(now, set(), 10) == []
    assert store.next_due_at() == now + 30  # the head of call 1, not the row behind it
