"""The status page's pictures, drawn on the server as SVG: no script, no CDN, no library.

Each picture is a ``<figure>``: the SVG (``role="img"`` with a name), a caption that says what
it shows in words, and the same numbers as a table in a ``<details>`` for screen readers and
for anyone who wants the figures. Bars are told apart by pattern and label, not only by colour.
Colours come from classes in ``page.css`` (the page's CSP allows no inline style).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from markupsafe import Markup, escape

from tracker.core import formatting, statecharts
from tracker.core.formatting import N_
from tracker.web import i18n, labels

Employees = Mapping[int, Mapping[str, Any]]


def _t(lang: str) -> Callable[..., str]:
    return lambda message, **params: i18n.text(lang, message, **params)


def _patterns(prefix: str) -> str:
    """Hatching for the second series of a picture (readable in greyscale and without colour)."""
    return (f'<defs><pattern id="{prefix}-hatch" width="6" height="6" '
            'patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
            '<rect width="6" height="6" class="hatch-ground"/>'
            '<line x1="0" y1="0" x2="0" y2="6" class="hatch-line" stroke-width="3"/>'
            '</pattern></defs>')


def _figure(key: str, caption: str, svg: str, head: list[str], rows: list[list[Any]],
            lang: str) -> Markup:
    t = _t(lang)
    summary = t(N_("The numbers as a table"))
    table = "".join(
        "<tr>" + "".join(f"<td>{escape(cell)}</td>" if i else f'<th scope="row">{escape(cell)}</th>'
                         for i, cell in enumerate(row)) + "</tr>" for row in rows)
    heads = "".join(f'<th scope="col">{escape(h)}</th>' for h in head)
    return Markup(
        f'<figure class="picture" data-picture="{key}">'
        f'<figcaption id="pic-{key}-caption">{escape(caption)}</figcaption>'
        f'<div class="svg-box">{svg}</div>'
        f'<details><summary>{escape(summary)}</summary>'
        f'<div class="scroll" tabindex="0" role="region" aria-label="{escape(caption)}">'
        f'<table class="numbers"><thead><tr>{heads}</tr></thead><tbody>{table}</tbody></table>'
        f'</div></details></figure>')


def _svg(key: str, width: int, height: int, body: str, name: str) -> str:
    return (f'<svg class="chart-svg" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{escape(name)}" preserveAspectRatio="xMinYMin meet">'
            f'{_patterns(key)}{body}</svg>')


def _text(x: float, y: float, text: str, cls: str = "svg-label", anchor: str = "start",
          raw: bool = False) -> str:
    """An SVG label; ``raw`` marks data (a name, an identifier) as not to be translated."""
    mark = ' translate="no"' if raw else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" class="{cls}" text-anchor="{anchor}"{mark}>'
            f'{escape(text)}</text>')


def render(lang: str, name: str, day: Mapping[str, Any], employees: Employees) -> Markup:
    """One picture of the day: ``hours``, ``answers``, ``people`` or ``callbacks``."""
    return {"hours": _hours, "answers": _answers, "people": _people,
            "callbacks": _callbacks}[name](lang, day, employees)


def _hours(lang: str, day: Mapping[str, Any], employees: Employees) -> Markup:
    t, num = _t(lang), partial(formatting.number, lang=lang)
    today, week = list(day["per_hour"]), list(day["last_week"])
    top = max([*today, *week, 1])
    width, height, left, bottom, top_pad = 520, 250, 36, 36, 56
    plot_h = height - bottom - top_pad
    slot = (width - left - 8) / 24
    parts = [f'<line x1="{left}" y1="{height - bottom}" x2="{width - 4}" y2="{height - bottom}" '
             'class="axis"/>']
    for value in sorted({top, round(top / 2)} - {0}):
        y = height - bottom - plot_h * value / top
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 4}" y2="{y:.1f}" class="grid"/>')
        parts.append(_text(left - 6, y + 5, num(value), anchor="end"))
    for hour in range(24):
        x = left + hour * slot
        for offset, value, cls in ((2, today[hour], "bar-a"), (slot / 2, week[hour], "bar-b")):
            h = plot_h * value / top
            fill = ' fill="url(#hours-hatch)"' if cls == "bar-b" else ""
            parts.append(f'<rect x="{x + offset:.1f}" y="{height - bottom - h:.1f}" '
                         f'width="{slot / 2 - 3:.1f}" height="{h:.1f}" class="{cls}"{fill}/>')
        if hour % 3 == 0:
            parts.append(_text(x + slot / 2, height - bottom + 20, f"{hour:02d}", anchor="middle"))
    parts.append(f'<rect x="{left}" y="6" width="16" height="16" class="bar-a"/>')
    parts.append(_text(left + 22, 20, t(N_("today: %(count)s"), count=num(sum(today)))))
    parts.append(f'<rect x="{left}" y="30" width="16" height="16" class="bar-b" '
                 'fill="url(#hours-hatch)"/>')
    parts.append(_text(left + 22, 44, t(N_("same weekday last week: %(count)s"),
                                         count=num(sum(week)))))
    caption = t(N_("Calls per hour today (solid) and on the same weekday last week (hatched)"))
    rows = [[f"{h:02d}:00", num(today[h]), num(week[h])] for h in range(24)
            if today[h] or week[h]]
    return _figure("hours", caption, _svg("hours", width, height, "".join(parts), caption),
                   [t(N_("hour")), t(N_("today")), t(N_("last week"))], rows, lang)


def _bar_rows(key: str, name: str, rows: list[tuple[str, list[tuple[int, str]]]],
              legend: list[tuple[str, str]], label_width: int = 220, raw: bool = False) -> str:
    """Horizontal bars: one row per item, one bar per series, the value written beside it."""
    width, row_h, bar_h, top = 520, 0, 18, 34
    series = max((len(values) for _, values in rows), default=1)
    row_h = series * (bar_h + 4) + 12
    height = top + max(1, len(rows)) * row_h
    biggest = max([v for _, values in rows for v, _ in values] + [1])
    scale = (width - label_width - 120) / biggest  # room for the value written after a bar
    parts = []
    x = 4
    for cls, text in legend:
        fill = f' fill="url(#{key}-hatch)"' if cls == "bar-b" else ""
        parts.append(f'<rect x="{x}" y="6" width="16" height="16" class="{cls}"{fill}/>')
        parts.append(_text(x + 22, 20, text))
        x += 30 + 9 * len(text)
    for index, (item, values) in enumerate(rows):
        y = top + index * row_h
        parts.append(_text(label_width - 8, y + bar_h, item, anchor="end", raw=raw))
        for k, (value, text) in enumerate(values):
            cls = "bar-a" if k == 0 else "bar-b"
            fill = f' fill="url(#{key}-hatch)"' if cls == "bar-b" else ""
            w = max(1.0, value * scale)
            by = y + k * (bar_h + 4)
            parts.append(f'<rect x="{label_width}" y="{by}" width="{w:.1f}" height="{bar_h}" '
                         f'class="{cls}"{fill}/>')
            parts.append(_text(label_width + w + 6, by + 14, text))
    return _svg(key, width, height, "".join(parts), name)


def _answers(lang: str, day: Mapping[str, Any], employees: Employees) -> Markup:
    t, num = _t(lang), partial(formatting.number, lang=lang)
    inbound, missed = int(day["inbound"]), int(day["missed"])
    answered = inbound - missed
    share = missed / inbound if inbound else None

    def pct(n: int) -> str:
        return formatting.percent(n / inbound, lang) if inbound else "–"

    wait = formatting.duration(day["median_wait"], lang) if day["median_wait"] is not None \
        else "–"
    caption = t(N_("Inbound calls today: %(missed)s of %(total)s missed (%(share)s); "
                   "median wait before an answer %(wait)s"),
                missed=num(missed), total=num(inbound),
                share=formatting.percent(share, lang) if share is not None else "–", wait=wait)
    rows = [(t(N_("answered")), [(answered, f"{num(answered)} · {pct(answered)}")]),
            (t(N_("missed")), [(missed, f"{num(missed)} · {pct(missed)}")])]
    svg = _hatch_last(_bar_rows("answers", caption, rows, [], label_width=160), "answers")
    table = [[t(N_("answered")), num(answered), pct(answered)],
             [t(N_("missed")), num(missed), pct(missed)],
             [t(N_("median wait before an answer")), wait, ""]]
    return _figure("answers", caption, svg, [t(N_("inbound calls")), t(N_("count")),
                                             t(N_("share"))], table, lang)


def _hatch_last(svg: str, key: str) -> str:
    """The last bar drawn hatched: missed calls, calls not returned."""
    head, sep, tail = svg.rpartition('class="bar-a"/>')
    return head + f'class="bar-b" fill="url(#{key}-hatch)"/>' + tail if sep else svg


def _people(lang: str, day: Mapping[str, Any], employees: Employees) -> Markup:
    t, num = _t(lang), partial(formatting.number, lang=lang)
    people: Mapping[int, Mapping[str, int]] = day["people"]
    rows = [(labels.employee(lang, employees, uis_id),
             [(c["answered"], t(N_("answered %(count)s"), count=num(c["answered"]))),
              (c["missed"], t(N_("missed %(count)s"), count=num(c["missed"])))])
            for uis_id, c in list(people.items())[:15]]
    caption = t(N_("Answered and missed calls per employee today"))
    if not rows:
        caption = t(N_("No employee took or missed a call today"))
    svg = _bar_rows("people", caption, rows, [("bar-a", t(N_("answered"))),
                                              ("bar-b", t(N_("missed (hatched)")))], raw=True)
    table = [[labels.person(lang, employees, uis_id), num(c["answered"]), num(c["missed"])]
             for uis_id, c in people.items()]
    return _figure("people", caption, svg, [t(N_("employee")), t(N_("answered")),
                                            t(N_("missed"))], table, lang)


def _callbacks(lang: str, day: Mapping[str, Any], employees: Employees) -> Markup:
    t, num = _t(lang), partial(formatting.number, lang=lang)
    back = day["callbacks"]
    names = {"5min": t(N_("within 5 min")), "30min": t(N_("5–30 min")),
             "2h": t(N_("30 min – 2 h")), "later": t(N_("later"))}
    rows = [(names[k], [(v, num(v))]) for k, v in back["buckets"].items()]
    rows.append((t(N_("not called back yet")), [(back["waiting"], num(back["waiting"]))]))
    median = formatting.duration(back["median"], lang) if back["median"] is not None else "–"
    caption = t(N_("Missed calls today and how soon the number was called back (the next "
                   "answered call with it, either way): median %(median)s"), median=median)
    svg = _hatch_last(_bar_rows("callbacks", caption, rows, [], label_width=220), "callbacks")
    table = [[name, str(value[0][1])] for name, value in rows]
    return _figure("callbacks", caption, svg, [t(N_("called back")), t(N_("missed calls"))],
                   table, lang)


# -- the statechart ---------------------------------------------------------------------------

def statechart(chart: statecharts.Chart, lang: str, counts: Mapping[str, int],
               today: Mapping[str, int]) -> Markup:
    """``statecharts/call.json`` as boxes and arrows, each state with its count now (active
    states) or today (final ones). Columns follow the longest path from the initial state."""
    t, num = _t(lang), partial(formatting.number, lang=lang)
    edges: dict[tuple[str, str], list[str]] = {}
    for transition in chart.transitions:
        dest = transition.get("dest")
        sources = transition["source"] if isinstance(transition["source"], list) \
            else [transition["source"]]
        for source in sources:
            if dest and dest != source:
                triggers = edges.setdefault((source, dest), [])
                if transition["trigger"] not in triggers:
                    triggers.append(transition["trigger"])
    rank = {chart.initial: 0}
    for _ in chart.states:  # longest path, relaxed once per state (the chart has no cycle)
        for (source, dest) in edges:
            if source in rank:
                rank[dest] = max(rank.get(dest, 0), rank[source] + 1)
    for state in chart.states:
        rank.setdefault(state, 0)
    columns: dict[int, list[str]] = {}
    for state in chart.states:
        columns.setdefault(rank[state], []).append(state)
    box_w, box_h, gap_x, gap_y, pad, line = 150, 60, 130, 100, 16, 14
    spans = [rank[d] - rank[s] for (s, d) in edges
             if rank[d] - rank[s] > 1 and columns[rank[s]].index(s) == columns[rank[d]].index(d)]
    top = pad + 24 + 34 * max(spans, default=0) + 2 * line  # room for the arcs and labels
    place: dict[str, tuple[float, float]] = {}
    for column, states in columns.items():
        for row, state in enumerate(states):
            place[state] = (pad + column * (box_w + gap_x), top + row * (box_h + gap_y))
    width = pad * 2 + len(columns) * box_w + (len(columns) - 1) * gap_x
    height = top + max(len(s) for s in columns.values()) * (box_h + gap_y) - gap_y + pad + 10
    parts = ['<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
             'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
             'class="arrow-head"/></marker></defs>']
    incoming: dict[str, list[tuple[str, str]]] = {}
    for (source, dest) in edges:
        incoming.setdefault(dest, []).append((source, dest))

    def label_lines(x: float, y: float, triggers: list[str], anchor: str) -> None:
        """One trigger per line, the last line at ``y``."""
        for k, trigger in enumerate(triggers):
            parts.append(_text(x, y - (len(triggers) - 1 - k) * line, trigger, "svg-small",
                               anchor, raw=True))

    for (source, dest), triggers in edges.items():
        (sx, sy), (dx, dy) = place[source], place[dest]
        span = rank[dest] - rank[source]
        if abs(sy - dy) < 1 and span == 1:  # neighbours in a row: a straight arrow
            x1, y1, x2, y2 = sx + box_w, sy + box_h / 2, dx, dy + box_h / 2
            path = f"M{x1:.1f},{y1:.1f} L{x2:.1f},{y2:.1f}"
            label_lines((x1 + x2) / 2, y1 - 6, triggers, "middle")
        elif abs(sy - dy) < 1:  # over a neighbour: an arc above the row
            x1, x2, y1 = sx + box_w * 0.7, dx + box_w * 0.3, sy
            cy = y1 - 34 * span * 2
            path = f"M{x1:.1f},{y1:.1f} Q{(x1 + x2) / 2:.1f},{cy:.1f} {x2:.1f},{y1:.1f}"
            label_lines((x1 + x2) / 2, (y1 + cy) / 2 - 4, triggers, "middle")
        else:  # to another row: down from the source, into the side of the destination
            arrivals = incoming[dest]
            share = (arrivals.index((source, dest)) + 1) / (len(arrivals) + 1)
            x1, y1 = sx + box_w * 0.5, sy + box_h
            x2, y2 = (dx, dy + box_h * share) if dx > sx + 1 else (dx + box_w * share, dy)
            path = f"M{x1:.1f},{y1:.1f} Q{x1:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"
            label_lines(x1 + 6, y1 + 8 + len(triggers) * line, triggers, "start")
        parts.append(f'<path d="{path}" class="edge" marker-end="url(#arrow)"/>')
    for state in chart.states:
        x, y = place[state]
        final = state in chart.final_states
        cls = f"state-box state-{state}" + (" final" if final else "")
        parts.append(f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="10" '
                     f'class="{cls}"/>')
        if final:
            parts.append(f'<rect x="{x + 4}" y="{y + 4}" width="{box_w - 8}" '
                         f'height="{box_h - 8}" rx="7" class="state-inner"/>')
        name = labels.label(lang, "state", state) or state
        parts.append(_text(x + box_w / 2, y + 26, name, "svg-state", "middle"))
        count = t(N_("%(count)s now"), count=num(counts[state])) if state in counts \
            else t(N_("%(count)s today"), count=num(today.get(state, 0)))
        parts.append(f'<text x="{x + box_w / 2:.1f}" y="{y + 48:.1f}" class="svg-count" '
                     f'text-anchor="middle" data-count="{escape(state)}">{escape(count)}</text>')
    ix, iy = place[chart.initial]
    parts.append(f'<circle cx="{ix - 2}" cy="{iy - 14}" r="6" class="initial"/>')
    parts.append(f'<path d="M{ix + 2},{iy - 12} L{ix + 18},{iy}" class="edge" '
                 'marker-end="url(#arrow)"/>')
    caption = t(N_("The call statechart: states as boxes (a double border marks a final "
                   "state), notifications on the arrows, today's counts in the boxes"))
    svg = (f'<svg class="chart-svg statechart" viewBox="0 0 {width} {height:.0f}" role="img" '
           f'aria-label="{escape(caption)}">{"".join(parts)}</svg>')
    rows = [[labels.label(lang, "state", s) or s,
             t(N_("%(count)s now"), count=num(counts[s])) if s in counts
             else t(N_("%(count)s today"), count=num(today.get(s, 0))),
             Markup("; ").join(Markup("<code>{}</code> → {}").format(
                 ", ".join(tr), labels.label(lang, "state", d) or d)
                 for (src, d), tr in edges.items() if src == s)]
            for s in chart.states]
    return _figure("statechart", caption, svg, [t(N_("state")), t(N_("calls")),
                                                t(N_("leaves on"))], rows, lang)
