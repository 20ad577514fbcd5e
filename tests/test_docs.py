"""Tests that keep the README honest: every setting, every template, the two commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tracker import config
from tracker.core import catalogue

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "key", [f"{section}.{key}" for section, keys in config.SCHEMA.items() for key in keys]
)
def test_every_setting_is_documented(key: str) -> None:
    assert f"`{key}`" in README, f"README.md does not document {key}"


def test_every_documented_setting_exists() -> None:
    documented = set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", README, flags=re.MULTILINE))
    known = {f"{section}.{key}" for section, keys in config.SCHEMA.items() for key in keys}
    assert documented - known == set()


@pytest.mark.parametrize("event", catalogue.EVENTS)
def test_readme_gives_the_exact_template_for_each_event(event: str) -> None:
    assert catalogue.template_body(event) in README


def test_readme_gives_the_two_commands() -> None:
    assert "make demo" in README and "make test" in README
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^demo:", makefile, flags=re.MULTILINE)
    assert re.search(r"^test:", makefile, flags=re.MULTILINE)
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_the_rendered_template_is_valid_json_for_uis_values() -> None:
    import json

    for event in catalogue.EVENTS:
        body = catalogue.render(catalogue.template_body(event), {"call_session_id": 1})
        assert json.loads(body)["event"] == event


README_RU = (ROOT / "README.ru.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("event", catalogue.EVENTS)
def test_the_russian_quick_start_gives_the_exact_template_for_each_event(event: str) -> None:
    assert catalogue.template_body(event) in README_RU


def test_the_russian_quick_start_gives_the_two_commands_activation_and_troubleshooting() -> None:
    for text in ("make demo", "make test", "run.py activate", "## Если что-то не работает"):
        assert text in README_RU
    assert "README.ru.md" in README
