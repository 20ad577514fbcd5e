"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tracker.db.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A migrated database in a real file."""
    store = Store(tmp_path / "tracker.db")
    store.migrate()
    yield store
    store.close()
