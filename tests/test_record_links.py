"""Recording links in the form the UIS report they come from documents (issue 13, defect 5)."""

from __future__ import annotations

import pytest

from tracker.core.payloads import record_url

MEDIA = "https://app.uiscom.ru/system/media/talk/"


def test_a_legs_report_record_links_to_its_call_session_id_without_a_trailing_slash():
    assert record_url(MEDIA, 998677427, "4455", report="legs") == \
        "https://app.uiscom.ru/system/media/talk/998677427/4455"


def test_a_calls_report_record_links_to_its_communication_id_with_the_trailing_slash():
    assert record_url(MEDIA, 5501, "4455", report="calls") == \
        "https://app.uiscom.ru/system/media/talk/5501/4455/"


def test_an_unknown_report_is_refused():
    with pytest.raises(ValueError, match="unknown report"):
        record_url(MEDIA, 1, "2", report="chats")
