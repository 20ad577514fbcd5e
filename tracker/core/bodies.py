"""The one request-body decoder every endpoint uses: JSON, form fields and query strings.

One set of rules, the strictest the four endpoints had before they shared it:

- UTF-8 only; an empty body is no JSON;
- a key twice in one object is refused (which one would win is the parser's whim, and a
  de-duplication key or a ``clientId`` must not depend on it);
- ``NaN``, ``Infinity`` and ``-Infinity`` are refused: they are not JSON;
- integers over CPython's 4300 digits are refused rather than crashing;
- nesting is limited to ``MAX_DEPTH`` levels;
- a lone surrogate escape (``"\\ud800"``) is refused: valid JSON, but no text, so SQLite, the
  logs and retailCRM could not store it.

The body's size is limited before any of this, by the web guard (``server.max_body_bytes``).
Every refusal is a ``BodyError`` whose message names the problem and whose ``field`` names the
key when there is one; each endpoint turns it into its own answer (400, a JSON-RPC parse error,
the routing fallback).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from tracker.errors import BodyError

MAX_DEPTH = 32


def _pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in items:
        if key in result:
            raise BodyError("appears twice in the JSON object", key[:100])
        result[key] = value
    return result


def _constant(name: str) -> Any:
    raise BodyError(f"body is not valid JSON: {name} is no JSON value")


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max([_depth(v, level + 1) for v in value.values()], default=level + 1)
    if isinstance(value, list):
        return max([_depth(v, level + 1) for v in value], default=level + 1)
    return level


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(f"body is not valid UTF-8 (byte {exc.start})") from None


def decode_json(raw: bytes) -> Any:
    """Any JSON value from a request body, under the rules above; ``BodyError`` otherwise."""
    text = _text(raw)
    if not text.strip():
        raise BodyError("body is empty: expected a JSON object")
    try:
        data = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        raise BodyError(f"body is not valid JSON: {exc.msg} at line {exc.lineno} "
                        f"column {exc.colno}") from None
    except RecursionError:
        raise BodyError("body is nested too deeply") from None
    except ValueError as exc:  # CPython refuses integers of over 4300 digits
        raise BodyError(f"body is not usable JSON: {str(exc)[:120]}") from None
    # Nesting needs brackets, and a lone surrogate an escape: skip the walks when neither is there
    # (this runs for every notification).
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(data) > MAX_DEPTH:
        raise BodyError(f"body is nested too deeply (over {MAX_DEPTH} levels)")
    if "\\u" in text:
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BodyError("body holds a lone surrogate escape (\\ud800-\\udfff)") from None
    return data


def decode_object(raw: bytes) -> dict[str, Any]:
    """A JSON object from a request body; ``BodyError`` for anything else."""
    data = decode_json(raw)
    if not isinstance(data, dict):
        raise BodyError(f"body must be a JSON object, got {type(data).__name__}")
    return data


def decode_form(raw: bytes) -> dict[str, str]:
    """Fields of an ``application/x-www-form-urlencoded`` body (the last of repeated names)."""
    return dict(parse_qsl(_text(raw), keep_blank_values=True))


def decode_query(query: bytes) -> dict[str, str]:
    """Fields of a query string (the first of repeated names; bad UTF-8 replaced, as browsers
    and quart do)."""
    fields: dict[str, str] = {}
    for name, value in parse_qsl(query.decode("utf-8", "replace"), keep_blank_values=True):
        fields.setdefault(name, value)
    return fields
