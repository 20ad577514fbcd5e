"""Load, validate and build the state machines defined as data in ``statecharts/*.json``.

A chart is validated before it is used: known keys only, states and triggers that exist, every
callback and condition present on the model class, exactly the required states, and every
(state, trigger) pair covered so that no notification can ever raise at run time. One
``transitions.Machine`` is built per chart, once, with ``model=None``; models are attached per
event by ``tracker.core.calls.apply``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from transitions import Machine

from tracker.errors import StatechartError

# ``statecharts/`` at the top of the checkout ships in the wheel as the data package
# ``tracker.statecharts`` (pyproject's package-dir): found the same way in a checkout with an
# editable install, and in a wheel. A checkout without any install falls back to the folder.
_CHECKOUT_DIR = Path(__file__).resolve().parents[2] / "statecharts"


def _default_dir() -> Traversable:
    try:
        return resources.files("tracker.statecharts")
    except ModuleNotFoundError:
        return _CHECKOUT_DIR


DEFAULT_DIR = _default_dir()
REQUIRED_STATES = ("ringing", "waiting_answer", "talking", "ended", "lost")
_CHART_KEYS = {"name", "description", "initial", "states", "transitions"}
_STATE_KEYS = {"name", "final", "description"}
_TRANSITION_KEYS = {"trigger", "source", "dest", "conditions", "unless", "after", "before",
                    "description"}


@dataclass(frozen=True)
class Chart:
    """A validated chart and the machine built from it."""

    name: str
    initial: str
    states: tuple[str, ...]
    final_states: frozenset[str]
    triggers: tuple[str, ...]
    transitions: tuple[dict[str, Any], ...]
    machine: Machine

    def is_final(self, state: str) -> bool:
        return state in self.final_states


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def build(definition: dict[str, Any], model_class: type, triggers: tuple[str, ...]) -> Chart:
    """Validate ``definition`` against ``model_class`` and the known ``triggers``; build it."""
    where = f"statechart {definition.get('name', '?')!r}"
    problems: list[str] = []
    for key in set(definition) - _CHART_KEYS:
        problems.append(f"unknown key {key!r}")
    states_raw = definition.get("states")
    if not isinstance(states_raw, list) or not states_raw:
        raise StatechartError(f"{where}: 'states' must be a non-empty list")
    states: list[str] = []
    final: set[str] = set()
    for state in states_raw:
        if not isinstance(state, dict) or not isinstance(state.get("name"), str):
            problems.append(f"state {state!r} must be an object with a name")
            continue
        for key in set(state) - _STATE_KEYS:
            problems.append(f"state {state['name']!r}: unknown key {key!r}")
        states.append(state["name"])
        if state.get("final"):
            final.add(state["name"])
    for name in REQUIRED_STATES:
        if name not in states:
            problems.append(f"required state {name!r} is missing")
    initial = definition.get("initial")
    if initial not in states:
        problems.append(f"initial state {initial!r} is not a state")

    expanded: list[dict[str, Any]] = []
    for index, raw in enumerate(_as_list(definition.get("transitions"))):
        if not isinstance(raw, dict):
            problems.append(f"transition #{index} must be an object")
            continue
        for key in set(raw) - _TRANSITION_KEYS:
            problems.append(f"transition #{index}: unknown key {key!r}")
        for source in _as_list(raw.get("source")):
            if source not in states:
                problems.append(f"transition #{index}: unknown source state {source!r}")
        if raw.get("dest") is not None and raw["dest"] not in states:
            problems.append(f"transition #{index}: unknown dest state {raw['dest']!r}")
        for name in _as_list(raw.get("conditions")) + _as_list(raw.get("unless")):
            if not callable(getattr(model_class, name, None)):
                problems.append(f"transition #{index}: condition {name!r} "
                                "is not a method of the model")
        for name in _as_list(raw.get("after")) + _as_list(raw.get("before")):
            if not callable(getattr(model_class, name, None)):
                problems.append(f"transition #{index}: callback {name!r} "
                                "is not a method of the model")
        for trigger in _as_list(raw.get("trigger")):
            if trigger not in triggers:
                problems.append(f"transition #{index}: unknown trigger {trigger!r}")
            item = {k: v for k, v in raw.items() if k != "description"}
            item["trigger"] = trigger
            expanded.append(item)

    # Total: each trigger is handled in each state by at least one unconditional transition.
    for state in states:
        for trigger in triggers:
            options = [t for t in expanded
                       if t["trigger"] == trigger and state in _as_list(t["source"])]
            if not any(not t.get("conditions") and not t.get("unless") for t in options):
                problems.append(f"trigger {trigger!r} is not handled unconditionally "
                                f"in state {state!r}")
    for state in final:
        for t in expanded:
            if state in _as_list(t["source"]) and t.get("dest") not in (None, state):
                problems.append(f"final state {state!r} must not be left "
                                f"(trigger {t['trigger']!r})")
    if problems:
        raise StatechartError(f"{where}: " + "; ".join(problems))

    machine = Machine(
        model=None,
        states=states,
        transitions=expanded,
        initial=initial,
        auto_transitions=False,
        send_event=True,
        ignore_invalid_triggers=False,
    )
    return Chart(
        name=str(definition.get("name")),
        initial=str(initial),
        states=tuple(states),
        final_states=frozenset(final),
        triggers=triggers,
        transitions=tuple(expanded),
        machine=machine,
    )


def load(path: Traversable, model_class: type, triggers: tuple[str, ...]) -> Chart:
    """Read and build one chart file."""
    try:
        definition = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StatechartError(f"{path}: cannot read: {exc}") from exc
    if not isinstance(definition, dict):
        raise StatechartError(f"{path}: must hold a JSON object")
    try:
        return build(definition, model_class, triggers)
    except StatechartError as exc:
        raise StatechartError(f"{path.name}: {exc}") from None


def load_all(directory: Traversable, model_class: type,
             triggers: tuple[str, ...]) -> dict[str, Chart]:
    """Every ``*.json`` chart in ``directory`` by name; raises on the first invalid one."""
    charts: dict[str, Chart] = {}
    found = ([p for p in directory.iterdir() if p.name.endswith(".json")]
             if directory.is_dir() else [])
    for path in sorted(found, key=lambda p: p.name):
        chart = load(path, model_class, triggers)
        if chart.name in charts:
            raise StatechartError(f"{path.name}: chart name {chart.name!r} is used twice")
        charts[chart.name] = chart
    if not charts:
        raise StatechartError(f"no statechart found in {directory}")
    return charts


def mermaid(chart: Chart) -> str:
    """The chart as Mermaid ``stateDiagram-v2`` text (for the status page)."""
    lines = ["stateDiagram-v2", f"    [*] --> {chart.initial}"]
    seen: set[tuple[str, str, str]] = set()
    for t in chart.transitions:
        if t.get("dest") is None:
            continue
        for source in _as_list(t["source"]):
            key = (source, t["dest"], t["trigger"])
            if key not in seen:
                seen.add(key)
                lines.append(f"    {source} --> {t['dest']}: {t['trigger']}")
    for state in sorted(chart.final_states):
        lines.append(f"    {state} --> [*]")
    return "\n".join(lines)
