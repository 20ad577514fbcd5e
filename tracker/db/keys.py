"""API keys with rights: created once (the plain key is shown once), stored only as a hash.

A key is ``trk_`` plus 256 random bits. Being that long and random, one SHA-256 is enough to
store it (a slow password hash protects guessable secrets; these cannot be guessed), and the hash
is also the lookup index. Rights are plain strings; ``admin`` implies every other right.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tracker.db.store import Store
from tracker.errors import KeyProblem

RIGHTS = ("calls:read", "outbox:write", "employees:write", "log:read", "admin")
PREFIX = "trk_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@:-]{0,63}$")
_TOUCH_SECONDS = 60.0  # how stale last_used_at may get: one write a minute per key, not per call


@dataclass(frozen=True)
class KeyInfo:
    """What a key may do. ``token`` is never kept: only its hash is stored."""

    id: int
    name: str
    rights: frozenset[str]
    created_at: float
    last_used_at: float | None = None
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, right: str) -> bool:
        """True when the key is active and holds ``right`` (or ``admin``)."""
        return self.active and (right in self.rights or "admin" in self.rights)


# The identity requests get when admin.allow_loopback_without_key lets them in without a key.
LOOPBACK = KeyInfo(id=0, name="loopback", rights=frozenset({"admin"}), created_at=0.0)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def parse_rights(text: str | Iterable[str]) -> frozenset[str]:
    """``"calls:read, log:read"`` -> the set; ``KeyProblem`` naming any unknown right."""
    items = text.split(",") if isinstance(text, str) else list(text)
    rights = frozenset(item.strip() for item in items if item.strip())
    unknown = sorted(rights - set(RIGHTS))
    if unknown:
        raise KeyProblem(f"unknown right(s) {', '.join(unknown)}; known: {', '.join(RIGHTS)}")
    if not rights:
        raise KeyProblem(f"give at least one right: {', '.join(RIGHTS)}")
    return rights


def create(store: Store, name: str, rights: Iterable[str], now: float | None = None
           ) -> tuple[KeyInfo, str]:
    """Store a new key; return it and the plain token (the only time the token exists)."""
    if not _NAME.match(name):
        raise KeyProblem("a key name is 1-64 letters, digits, spaces or ._@:- and starts with a "
                        "letter or digit")
    granted = parse_rights(rights)
    now = time.time() if now is None else now
    token = PREFIX + secrets.token_urlsafe(32)
    with store.transaction():
        taken = store.conn.execute(
            "SELECT 1 FROM api_keys WHERE name = ? AND revoked_at IS NULL", (name,)).fetchone()
        if taken:
            raise KeyProblem(f"an active key named {name!r} exists; revoke it first")
        cursor = store.conn.execute(
            "INSERT INTO api_keys (name, rights, token_hash, hint, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (name, json.dumps(sorted(granted)), hash_token(token), token[:8], now),
        )
    assert cursor.lastrowid is not None
    return KeyInfo(cursor.lastrowid, name, granted, now), token


def find(store: Store, token: str, now: float | None = None) -> KeyInfo | None:
    """The key this token is (revoked ones included), or None. Notes the use of active keys."""
    if not token.startswith(PREFIX) or len(token) > 200:
        return None
    row = store.conn.execute(
        "SELECT * FROM api_keys WHERE token_hash = ?", (hash_token(token),)).fetchone()
    if row is None:
        return None
    key = _info(row)
    now = time.time() if now is None else now
    if key.active and (key.last_used_at is None or now - key.last_used_at > _TOUCH_SECONDS):
        store.conn.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (now, key.id))
    return key


def authorize(store: Store, token: str | None, right: str) -> KeyInfo | None:
    """The key if ``token`` is an active key holding ``right`` (or ``admin``), else None.

    The status page and the admin API share this check. A missing token is None here: whether
    loopback requests may pass without one is the caller's decision (``loopback_allowed``).
    """
    if not token:
        return None
    key = find(store, token)
    return key if key is not None and key.allows(right) else None


PROXY_HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip")


def loopback_allowed(allow: bool, remote_addr: str | None,
                     header_names: Iterable[str] = ()) -> bool:
    """True when ``admin.allow_loopback_without_key`` is on, the peer is 127.0.0.0/8 or ::1, and
    the request carries no proxy header (``header_names``): behind a reverse proxy on the same
    machine every request comes from loopback, and a forwarded one is remote. One rule for the
    admin API, the status page and ``/metrics``."""
    if not allow or not remote_addr:
        return False
    if any(name.lower() in PROXY_HEADERS for name in header_names):
        return False
    try:
        return ipaddress.ip_address(remote_addr.split("%")[0]).is_loopback
    except ValueError:
        return False


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def all_keys(store: Store) -> list[KeyInfo]:
    rows = store.conn.execute("SELECT * FROM api_keys ORDER BY id").fetchall()
    return [_info(r) for r in rows]


def count_active(store: Store) -> int:
    """How many keys are not revoked."""
    return int(store.conn.execute(
        "SELECT count(*) FROM api_keys WHERE revoked_at IS NULL").fetchone()[0])


def table(items: list[KeyInfo]) -> str:
    """``keys list`` output: one line per key, never the key itself."""
    def when(moment: float | None) -> str:
        return "-" if moment is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(moment))

    lines = [f"{'id':>4}  {'name':<24} {'created (UTC)':<16}  {'last used':<16}  "
             f"{'status':<24} rights"]
    for key in items:
        status = "active" if key.active else f"revoked {when(key.revoked_at)}"
        lines.append(f"{key.id:>4}  {key.name:<24} {when(key.created_at):<16}  "
                     f"{when(key.last_used_at):<16}  {status:<24} {','.join(sorted(key.rights))}")
    if not items:
        lines.append("(no keys: create one with `python run.py keys create --name N --rights R`)")
    return "\n".join(lines)


def revoke(store: Store, name_or_id: str, now: float | None = None) -> KeyInfo:
    """Revoke the active key with this name (or id); ``KeyProblem`` when there is none."""
    now = time.time() if now is None else now
    with store.transaction():
        row = store.conn.execute(
            "SELECT * FROM api_keys WHERE name = ? AND revoked_at IS NULL", (name_or_id,)
        ).fetchone()
        if row is None and name_or_id.isascii() and name_or_id.isdigit():
            row = store.conn.execute(
                "SELECT * FROM api_keys WHERE id = ? AND revoked_at IS NULL", (int(name_or_id),)
            ).fetchone()
        if row is None:
            raise KeyProblem(f"no active key named {name_or_id!r}")
        store.conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (now, row["id"]))
        # Its status-page sessions end with it (sessions.find checks revoked_at too).
        store.conn.execute("DELETE FROM page_sessions WHERE key_id = ?", (row["id"],))
    return _info({**dict(row), "revoked_at": now})


def info(row: sqlite3.Row | Mapping[str, Any]) -> KeyInfo:
    """A key from its ``api_keys`` row."""
    return _info(row)


def _info(row: sqlite3.Row | Mapping[str, Any]) -> KeyInfo:
    r = dict(row)
    return KeyInfo(id=r["id"], name=r["name"], rights=frozenset(json.loads(r["rights"])),
                   created_at=r["created_at"], last_used_at=r["last_used_at"],
                   revoked_at=r["revoked_at"])
