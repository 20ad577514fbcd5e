"""Phone normalisation: UIS digits and CRM free text meet in E.164; nothing readable is lost."""

from __future__ import annotations

import pytest

from tracker.core import phones

# (raw, region, E.164 or passthrough, UIS digits)
CASES = [
    pytest.param("79508418541", "RU", "+79508418541", "79508418541", id="uis-digits"),
    pytest.param("8 (999) 123-45-67", "RU", "+79991234567", "79991234567", id="crm-typed-8-prefix"),
    pytest.param("+7 999 1234567", "RU", "+79991234567", "79991234567", id="plus-7-spaced"),
    pytest.param("89991234567", "RU", "+79991234567", "79991234567", id="8-prefix-bare"),
    pytest.param("  79508418541 ", "RU", "+79508418541", "79508418541", id="padded"),
    pytest.param("101", "RU", "101", "101", id="short-internal"),
    pytest.param(" 101 ", "RU", "101", "101", id="short-internal-padded"),
    pytest.param("", "RU", None, None, id="empty"),
    pytest.param("   ", "RU", None, None, id="blank"),
    pytest.param(None, "RU", None, None, id="none"),
    pytest.param("anonymous", "RU", "anonymous", None, id="anonymous"),
    pytest.param("+44 20 7946 0958", "RU", "+442079460958", "442079460958", id="foreign-plus"),
    pytest.param("020 7946 0958", "GB", "+442079460958", "442079460958", id="gb-national-in-gb"),
    pytest.param("020 7946 0958", "RU", "020 7946 0958", "02079460958", id="gb-national-in-ru"),
]


@pytest.mark.parametrize(("raw", "region", "e164", "digits"), CASES)
def test_to_e164(raw: str | None, region: str, e164: str | None, digits: str | None) -> None:
    assert phones.to_e164(raw, region) == e164


@pytest.mark.parametrize(("raw", "region", "e164", "digits"), CASES)
def test_to_digits(raw: str | None, region: str, e164: str | None, digits: str | None) -> None:
    assert phones.to_digits(raw, region) == digits


def test_region_defaults_to_russia() -> None:
    assert phones.to_e164("8 (999) 123-45-67") == "+79991234567"
    assert phones.to_digits("8 (999) 123-45-67") == "79991234567"


@pytest.mark.parametrize(
    "raw", ["79508418541", "8 (950) 841-85-41", "+7 950 841 85 41", "89508418541"]
)
def test_every_spelling_of_one_number_meets_in_one_e164(raw: str) -> None:
    assert phones.to_e164(raw) == "+79508418541"
