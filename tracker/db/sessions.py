"""Status-page sessions: what a login's cookie stands for, stored only as a hash.

A login with a key opens a session: a random id (``trs_`` plus 256 bits) that goes into the
cookie, and a row with its SHA-256, the key and an expiry. The session has the key's rights as
they are when it is used, so revoking the key ends every session it opened; logging out deletes
the row. The id is no API key (it lacks the ``trk_`` prefix), so a stolen cookie never works as
``Authorization: Bearer``.
"""

from __future__ import annotations

import secrets
import time

from tracker.db import keys
from tracker.db.store import Store

PREFIX = "trs_"
LIFETIME_SECONDS = 12 * 3600.0


def open_session(store: Store, key: keys.KeyInfo, now: float | None = None,
                 lifetime_seconds: float = LIFETIME_SECONDS) -> str:
    """Store a new session of ``key``; return its id (the only time the id exists)."""
    now = time.time() if now is None else now
    token = PREFIX + secrets.token_urlsafe(32)
    with store.transaction():
        store.conn.execute("DELETE FROM page_sessions WHERE expires_at <= ?", (now,))
        store.conn.execute(
            "INSERT INTO page_sessions (token_hash, key_id, created_at, expires_at)"
            " VALUES (?, ?, ?, ?)", (keys.hash_token(token), key.id, now, now + lifetime_seconds))
    return token


def find(store: Store, token: str | None, now: float | None = None) -> keys.KeyInfo | None:
    """The active key of an unexpired session, or None."""
    if not token or not token.startswith(PREFIX) or len(token) > 200:
        return None
    now = time.time() if now is None else now
    row = store.conn.execute(
        "SELECT k.* FROM page_sessions s JOIN api_keys k ON k.id = s.key_id"
        " WHERE s.token_hash = ? AND s.expires_at > ? AND k.revoked_at IS NULL",
        (keys.hash_token(token), now)).fetchone()
    return None if row is None else keys.info(row)


def close(store: Store, token: str | None) -> bool:
    """Delete the session (logout); True when there was one."""
    if not token or not token.startswith(PREFIX):
        return False
    with store.transaction():
        cursor = store.conn.execute("DELETE FROM page_sessions WHERE token_hash = ?",
                                    (keys.hash_token(token),))
    return cursor.rowcount > 0


def count(store: Store) -> int:
    return int(store.conn.execute("SELECT count(*) FROM page_sessions").fetchone()[0])
