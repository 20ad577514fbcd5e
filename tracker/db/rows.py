"""The base of the per-table query classes that ``Store`` is made of: a connection, a
transaction."""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager


class Rows:
    """What every table's queries need from the store. ``Store`` provides both."""

    conn: sqlite3.Connection

    def transaction(self) -> AbstractContextManager[None]:
        raise NotImplementedError  # Store.transaction
