"""Every example in docs/api.md is a real exchange: sent to the real daemon, answered as shown.

Each JSON code block of the document (and the body of each ``curl … -d '…'`` to ``/api/v1``) is
a request or an answer; an answer belongs to the request before it. The requests are sent in
the document's order to a daemon holding the calls and employees the examples name (below), and
each answer must equal the documented one field by field. Two placeholders, and only these:
``"trk_…"`` in a request is an API key (one holding ``admin``), and ``"…"`` in an answer stands
for a value that changes on every run (a time, an uptime). A block that is neither a request
nor an answer fails the test: every example is checked.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import trio

from tests.support import ANNA, MAPPING, Daemon, open_system, start_time
from tracker.db import keys
from tracker.simulators import scenarios

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "api.md"
KEY = "trk_…"
ANY = "…"

# what the examples name: a lost call at 1715950000 (17 May 2024 15:46:40 in Moscow, the
# account's time zone), an answered one before it, and UIS employee 13421
LOST = 998677420
ANSWERED = 998677500
EMPLOYEE = 13421
EMPLOYEES = [{"uis_id": uis_id, "crm_user_id": user, "code": code}
             for uis_id, (user, code) in MAPPING.items()] + [
    {"uis_id": EMPLOYEE, "crm_user_id": 1, "code": "104"}]


def blocks(text: str) -> list[tuple[int, str, str]]:
    """The fenced code blocks: (line, language, content)."""
    found = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
        found.append((text.count("\n", 0, match.start()) + 1, match[1], match[2]))
    return found


def is_request(value: Any) -> bool:
    items = value if isinstance(value, list) else [value]
    return bool(items) and all(isinstance(i, dict) and "method" in i for i in items)


def is_answer(value: Any) -> bool:
    items = value if isinstance(value, list) else [value]
    return bool(items) and all(isinstance(i, dict) and ("result" in i or "error" in i)
                               for i in items)


def examples(text: str) -> list[tuple[int, Any, Any]]:
    """(line, request, documented answer) for every example; every JSON block is one of them."""
    pairs: list[tuple[int, Any, Any]] = []
    pending: tuple[int, Any] | None = None
    for line, language, content in blocks(text):
        if language == "sh":
            if "/api/v1" not in content:
                continue
            body = re.search(r"-d '(.*?)'", content, flags=re.DOTALL)
            assert body, f"docs/api.md line {line}: a curl to /api/v1 without -d '…'"
            content, language = body[1], "json"
        assert language == "json", f"docs/api.md line {line}: a {language or 'bare'} block"
        value = json.loads(content)
        if is_request(value):
            assert pending is None, f"docs/api.md line {pending[0]}: a request without answer"
            pending = (line, value)
        else:
            assert is_answer(value), f"docs/api.md line {line}: neither a request nor an answer"
            assert pending is not None, f"docs/api.md line {line}: an answer without request"
            pairs.append((pending[0], pending[1], value))
            pending = None
    assert pending is None, f"docs/api.md line {pending[0]}: a request without answer"
    return pairs


def with_key(value: Any, key: str) -> Any:
    if isinstance(value, dict):
        return {k: with_key(v, key) for k, v in value.items()}
    if isinstance(value, list):
        return [with_key(v, key) for v in value]
    return key if value == KEY else value


def differences(documented: Any, real: Any, path: str = "") -> list[str]:
    """Where the real answer differs from the documented one (``"…"`` matches any value)."""
    if documented == ANY:
        return []
    if isinstance(documented, dict) and isinstance(real, dict):
        found = [f"{path}.{k}: documented, not answered" for k in documented if k not in real]
        found += [f"{path}.{k}: answered ({real[k]!r}), not documented" for k in real
                  if k not in documented]
        for k in documented:
            if k in real:
                found += differences(documented[k], real[k], f"{path}.{k}")
        return found
    if isinstance(documented, list) and isinstance(real, list):
        if len(documented) != len(real):
            return [f"{path}: {len(documented)} items documented, {len(real)} answered"]
        return [d for i, (a, b) in enumerate(zip(documented, real, strict=True))
                for d in differences(a, b, f"{path}[{i}]")]
    same = documented == real and type(documented) is type(real)
    return [] if same else [f"{path}: documented {documented!r}, answered {real!r}"]


async def fixture(d: Daemon) -> str:
    await d.play(scenarios.answered(ANSWERED, start=start_time(), employee=ANNA))
    await d.play(scenarios.lost_in_ivr(LOST, start=datetime(2024, 5, 17, 15, 46, 40)))
    return keys.create(d.ctx.store, "docs", ["admin"])[1]


def test_the_document_is_made_of_examples_with_answers() -> None:
    pairs = examples(DOC.read_text(encoding="utf-8"))
    assert len(pairs) >= 5
    methods = {i["method"] for _, request, _ in pairs
               for i in (request if isinstance(request, list) else [request])}
    assert {"get.calls", "update.employees", "get.statistics"} <= methods
    assert any(isinstance(request, list) for _, request, _ in pairs)  # a batch is shown


async def test_every_example_in_the_api_docs_is_answered_as_documented(tmp_path):
    pairs = examples(DOC.read_text(encoding="utf-8"))
    with trio.fail_after(60):
        async with open_system(tmp_path, employees=EMPLOYEES) as d:
            key = await fixture(d)
            for line, request, documented in pairs:
                response = await d.client.post(f"{d.url}/api/v1",
                                               json=with_key(request, key))
                assert response.status_code == 200, (line, response.text)
                found = differences(documented, response.json())
                assert found == [], f"docs/api.md line {line}: {found}"


async def test_the_readmes_api_examples_are_answered_with_results(tmp_path):
    """The README shows requests without answers: each must at least be a valid call."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    requests = [json.loads(body[1]) for _, language, content in blocks(readme)
                if language == "sh" and "/api/v1" in content
                and (body := re.search(r"-d '(.*?)'", content, flags=re.DOTALL))]
    assert requests
    with trio.fail_after(60):
        async with open_system(tmp_path, employees=EMPLOYEES) as d:
            key = await fixture(d)
            for request in requests:
                answer = (await d.client.post(f"{d.url}/api/v1",
                                              json=with_key(request, key))).json()
                assert "result" in answer, (request, answer)
