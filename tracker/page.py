"""The status page and call timeline as HTML (Jinja2, autoescaped: every value comes from outside)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import jinja2

from . import statecharts
from .context import Context

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)


def _when(timestamp: float | None, tz: Any) -> str:
    if not timestamp:
        return ""
    return datetime.fromtimestamp(timestamp, tz).strftime("%Y-%m-%d %H:%M:%S")


_ENV.filters["when"] = _when

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1rem;max-width:72rem;color:#222}
table{border-collapse:collapse;width:100%;font-size:.9rem;margin-bottom:1.5rem}
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #ddd;vertical-align:top}
.state{font-weight:600}.ended{color:#17692f}.lost{color:#a33}.dead{color:#a33}
pre{white-space:pre-wrap;word-break:break-all;font-size:.8rem;margin:0}
.cards{display:flex;gap:1rem;flex-wrap:wrap}.card{border:1px solid #ccc;border-radius:6px;padding:.5rem 1rem}
@media (max-width:40rem){table{font-size:.8rem}th:nth-child(n+6),td:nth-child(n+6){display:none}}
"""

_STATUS = _ENV.from_string(
    """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="5"><title>tracker</title><style>{{ style }}</style></head><body>
<h1>tracker</h1>
<div class="cards">
{% for state in states %}<div class="card"><div>{{ state }}</div><strong>{{ counts.get(state, 0) }}</strong></div>{% endfor %}
<div class="card"><div>outbox pending</div><strong>{{ outbox.pending }}</strong></div>
<div class="card"><div>retrying</div><strong>{{ outbox.retrying }}</strong></div>
<div class="card"><div>dead letters</div><strong>{{ outbox.dead }}</strong></div>
</div>
{% if outbox.last_error %}<p>Last delivery error: {{ outbox.last_error }}</p>{% endif %}
<h2>Recent calls</h2>
<table><tr><th>session</th><th>state</th><th>dir</th><th>contact</th><th>started</th><th>talk s</th><th>employee</th></tr>
{% for c in calls %}<tr><td><a href="/calls/{{ c.id }}">{{ c.id }}</a></td><td class="state {{ c.state }}">{{ c.state }}</td>
<td>{{ c.direction }}</td><td>{{ c.contact_phone or "" }}</td><td>{{ c.started_at|when(tz) }}</td>
<td>{{ c.talk_seconds if c.talk_seconds is not none else "" }}</td><td>{{ c.talked_employee_id or "" }}</td></tr>
{% else %}<tr><td colspan="7">No calls yet.</td></tr>{% endfor %}</table>
{% if warnings %}<h2>Mapping warnings</h2><table><tr><th>kind</th><th>subject</th><th>message</th><th>count</th></tr>
{% for w in warnings %}<tr><td>{{ w.kind }}</td><td>{{ w.subject }}</td><td>{{ w.message }}</td><td>{{ w.count }}</td></tr>{% endfor %}</table>{% endif %}
{% if dead %}<h2>Dead letters</h2><table><tr><th>#</th><th>call</th><th>kind</th><th>error</th></tr>
{% for d in dead %}<tr><td>{{ d.id }}</td><td><a href="/calls/{{ d.call_id }}">{{ d.call_id }}</a></td><td>{{ d.kind }}</td><td class="dead">{{ d.last_error }}</td></tr>{% endfor %}</table>{% endif %}
<h2>Statechart</h2><pre>{{ chart }}</pre>
<p><small>up {{ uptime }} s · <a href="/healthz">/healthz</a></small></p>
</body></html>"""
)

_CALL = _ENV.from_string(
    """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>call {{ call.id }}</title><style>{{ style }}</style></head><body>
<p><a href="/">&larr; all calls</a></p><h1>Call {{ call.id }} <span class="state {{ call.state }}">{{ call.state }}</span></h1>
<table>{% for k, v in call.items() %}<tr><th>{{ k }}</th><td>{{ v if v is not none else "" }}</td></tr>{% endfor %}</table>
<h2>Notifications and transitions</h2>
<table><tr><th>received</th><th>event</th><th>outcome</th><th>transition</th><th>body</th></tr>
{% for e in events %}<tr><td>{{ e.received_at|when(tz) }}</td><td>{{ e.event }}</td><td>{{ e.outcome }}{% if e.duplicates %} (+{{ e.duplicates }} duplicates){% endif %}</td>
<td>{{ e.state_before }} &rarr; {{ e.state_after }}</td><td><pre>{{ e.body }}</pre></td></tr>{% endfor %}</table>
<h2>Actions</h2>
<table><tr><th>#</th><th>kind</th><th>status</th><th>attempts</th><th>note / error</th><th>request</th><th>answer</th></tr>
{% for o in outbox %}<tr><td>{{ o.id }}</td><td>{{ o.kind }}</td><td>{{ o.status }}</td><td>{{ o.attempts }}</td>
<td>{{ o.last_error or "" }}</td><td><pre>{{ o.request or "" }}</pre></td><td><pre>{{ o.response or "" }}</pre></td></tr>{% endfor %}</table>
</body></html>"""
)


def render_status(ctx: Context) -> str:
    """The overview page: counts per state, recent calls, outbox health, warnings."""
    return _STATUS.render(
        style=_STYLE,
        states=ctx.chart.states,
        counts=ctx.store.count_by_state(),
        outbox=ctx.outbox.statistics(),
        calls=ctx.store.recent_calls(50),
        warnings=ctx.store.warnings(),
        dead=ctx.store.dead_letters(20),
        chart=statecharts.mermaid(ctx.chart),
        tz=ctx.tz,
        uptime=round(time.time() - ctx.lifecycle.started_at),
    )


def render_call(ctx: Context, call_id: int) -> str:
    """One call's timeline: every notification, transition and outbox action."""
    return _CALL.render(
        style=_STYLE,
        call=ctx.store.call_row(call_id),
        events=ctx.store.events_for(call_id),
        outbox=ctx.store.outbox_for(call_id),
        tz=ctx.tz,
    )
