"""The read-only status page (`GET /`): the `/v1/cluster` document as one HTML page. Pure.

The header says what an on-call looks for first: how many nodes are in each state (`unknown`
ones too), this supervisor's Docker Engine and last reload (from its `/v1/status`, when given),
the store, the meta leader (or its absence), every agent of the file (up, down since when, or
never seen), slots and how long they have been held, pauses, files that differ.

No I/O and no aiohttp here: the API hands in the document, the last events and the time. Every
value is escaped (node names, reasons and events come from files and other machines). The page
loads nothing from anywhere: inline CSS, no script, no font, no image; it reloads itself every
5 s, so the API's `Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'` holds.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

REFRESH_S: Final = 5
EVENTS_SHOWN: Final = 20
NEVER_SEEN: Final = '<span class="badge tone-bad">down</span> never seen: no supervisor runs for it'
_NO_EVENTS: Final = '<tr><td colspan="5" class="muted">no events yet</td></tr>'

TONES: Final[Mapping[str, str]] = {
    "healthy": "ok",
    "starting": "busy",
    "reopening": "busy",
    "blocked": "busy",
    "pending": "busy",
    "paused": "busy",
    "stopping": "busy",
    "unhealthy": "warn",
    "lease_lost": "warn",
    "backoff": "bad",
    "crashloop": "bad",
    "degraded": "bad",
    "stopped": "off",
    "unknown": "off",
    "remote": "off",
}
"""Node and cluster states -> a colour class (`tone-*`); anything else is `tone-off` (grey)."""

_CSS: Final = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d2430;background:#f6f7f9}
h1{font-size:1.4em;margin:0 0 .4em}
.badge{display:inline-block;padding:.1em .6em;border-radius:.8em;font-weight:600}
ul.facts{list-style:none;padding:0;margin:.2em 0 1em}ul.facts li{margin:.15em 0}
table{border-collapse:collapse;width:100%;background:#fff;margin-bottom:1.5em}
th,td{text-align:left;padding:.35em .6em;border-bottom:1px solid #dde1e7;vertical-align:top}
th{background:#e9ecf1;font-size:.85em;letter-spacing:.04em}
td.num{text-align:right}td.why{max-width:36em;overflow-wrap:anywhere}
code,.mono{font-family:ui-monospace,monospace;font-size:.92em}
.muted{color:#6b7280}.alert{color:#b42318;font-weight:600}
.tone-ok{background:#e3f6e8}.tone-ok .badge,.badge.tone-ok{background:#1f8a3b;color:#fff}
.tone-busy{background:#e6effc}.tone-busy .badge,.badge.tone-busy{background:#2563c9;color:#fff}
.tone-warn{background:#fdf0e1}.tone-warn .badge,.badge.tone-warn{background:#c2570c;color:#fff}
.tone-bad{background:#fde6e4}.tone-bad .badge,.badge.tone-bad{background:#b42318;color:#fff}
.tone-off{background:#eef0f3}.tone-off .badge,.badge.tone-off{background:#6b7280;color:#fff}
"""


def _e(value: object) -> str:
    """Escaped text of any value (`-` for none): the only way a value reaches the page."""
    return "-" if value is None or value == "" else html.escape(str(value), quote=True)


def _obj(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def tone(state: object) -> str:
    return TONES.get(str(state), "off")


def _badge(state: object) -> str:
    return f'<span class="badge tone-{tone(state)}">{_e(state)}</span>'


def _ago(at: object, now: datetime) -> str:
    """`12s ago` for an RFC 3339 time, empty when it does not parse."""
    try:
        seconds = int((now - datetime.fromisoformat(str(at).replace("Z", "+00:00"))).total_seconds())
    except (TypeError, ValueError):
        return ""
    if seconds < 0:
        return f"in {_span(-seconds)}"
    return f"{_span(seconds)} ago"


def _span(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _page(title: str, body: list[str]) -> str:
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="refresh" content="{REFRESH_S}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
            *body,
            "</body></html>",
        ]
    )


def _counts(nodes: list[Any]) -> str:
    """`3 healthy, 1 unknown`: the nodes by state, the healthy first, with their colours."""
    counts: dict[str, int] = {}
    for node in map(_obj, nodes):
        state = str(node.get("state"))
        counts[state] = counts.get(state, 0) + 1
    order = sorted(counts, key=lambda s: (s != "healthy", s))
    return ", ".join(f'{counts[s]} <span class="badge tone-{tone(s)}">{_e(s)}</span>' for s in order) or "-"


def _local(local: Mapping[str, Any]) -> list[str]:
    """This supervisor's own troubles: its Docker Engine and its last reload."""
    facts = []
    engine = _obj(local.get("engine"))
    if engine.get("ok") is False:
        facts.append(f'<span class="alert">Docker Engine unreachable: {_e(engine.get("error"))}</span>')
    elif engine:
        facts.append("Docker Engine: reachable")
    reload = _obj(local.get("reload"))
    if reload.get("ok") is False:
        error = " / ".join(line.strip() for line in str(reload.get("error")).splitlines())
        facts.append(f'<span class="alert">last reload FAILED at {_e(reload.get("at"))}: {_e(error)}</span>')
    elif reload.get("at"):
        facts.append(f"last reload: applied at {_e(reload.get('at'))}")
    return facts


def _never_seen(doc: Mapping[str, Any]) -> list[str]:
    """Hosts of the file whose nodes no supervisor ever published (no agent, up or gone)."""
    known = {str(_obj(a).get("host")) for a in _list(doc.get("agents"))}
    return sorted(
        {
            str(_obj(n).get("host"))
            for n in _list(doc.get("nodes"))
            if _obj(n).get("state") == "unknown" and not _obj(n).get("agent")
        }
        - known
    )


def _facts(doc: Mapping[str, Any], now: datetime, local: Mapping[str, Any] | None = None) -> list[str]:
    """The header lines: nodes by state, this supervisor's Docker and reload, coordination, the
    leader, agents (never seen ones too), slots and their age, pauses, spec hashes that disagree."""
    facts: list[str] = [f"nodes: {_counts(_list(doc.get('nodes')))}"]
    facts += _local(local or {})
    coord = _obj(doc.get("coordination"))
    if coord.get("ok"):
        where = str(coord.get("endpoint") or "").split("://", 1)[-1]  # text, not a link
        facts.append(f'coordination: ok <span class="muted">(etcd {_e(where)})</span>')
    else:
        facts.append(f'<span class="alert">coordination unavailable: {_e(coord.get("detail"))}</span>')
    unreadable = _list(coord.get("unreadable"))
    if unreadable:
        keys = ", ".join(_e(_obj(u).get("key")) for u in unreadable)
        facts.append(f'<span class="alert">unreadable records in the store: {keys}</span>')
    leader = _obj(doc.get("meta")).get("leader")
    if leader:
        facts.append(f"meta leader: {_e(leader)}")
    else:
        facts.append('<span class="alert">no meta leader</span> (meta lost its quorum, or it cannot be read)')
    agents = []
    for agent in map(_obj, _list(doc.get("agents"))):
        if agent.get("state") == "up":
            agents.append(f'{_e(agent.get("host"))} <span class="badge tone-ok">up</span>')
        elif agent.get("since") or agent.get("heartbeat_at"):
            since = agent.get("since") or agent.get("heartbeat_at")
            agents.append(
                f'{_e(agent.get("host"))} <span class="badge tone-bad">down</span> since {_e(since)} '
                f'<span class="muted">{_e(_ago(since, now))}</span>'
            )
        else:  # a host of the file whose supervisor was never seen
            agents.append(f"{_e(agent.get('host'))} {NEVER_SEEN}")
    for host in _never_seen(doc) if coord.get("ok") else []:  # without the store nobody can tell
        agents.append(f"{_e(host)} {NEVER_SEEN}")
    facts.append("agents: " + (", ".join(agents) or "-"))
    for slot in map(_obj, _list(doc.get("disruptions"))):
        held = _ago(slot.get("since"), now).removesuffix(" ago")
        facts.append(
            f"disruption slot: <b>{_e(slot.get('node'))}</b> held by {_e(slot.get('host'))} "
            f"since {_e(slot.get('since'))}{f' (for {_e(held)})' if held else ''} ({_e(slot.get('reason'))})"
        )
    paused = _obj(doc.get("paused"))
    if paused.get("all"):
        facts.append('<span class="badge tone-busy">the whole cluster is paused</span>')
    if _list(paused.get("nodes")):
        facts.append("paused: " + ", ".join(_e(n) for n in _list(paused.get("nodes"))))
    cluster = _obj(doc.get("cluster"))
    hashes = _obj(cluster.get("spec_hashes"))
    if cluster.get("spec_agrees") is False or len({str(h) for h in hashes.values()}) > 1:
        listed = ", ".join(f"{_e(host)} <code>{_e(h)}</code>" for host, h in sorted(hashes.items()))
        facts.append(f'<span class="alert">the agents\' files differ (changes wait):</span> {listed}')
    return [f"<li>{fact}</li>" for fact in facts]


def _health(node: Mapping[str, Any]) -> str:
    health = _obj(node.get("health"))
    ok = health.get("ok")
    word = "ok" if ok is True else "fail" if ok is False else "-"
    return f'<td title="{_e(health.get("detail"))}">{word}</td>'


def _lease(node: Mapping[str, Any]) -> str:
    lease = node.get("lease")
    if not isinstance(lease, Mapping):
        return "<td>-</td>"
    shards = ", ".join(_e(s) for s in _list(lease.get("shards")))  # those whose locks name the node
    held = lease.get("held")
    if held is True:
        word = f"held ({shards or 'no shards'})"
    else:  # not held: some shards may be locked already (reopening), the detail says which are not
        word = "-" if held is None else f"not held ({shards})" if shards else "not held"
    return f'<td title="{_e(lease.get("detail"))}">{word}</td>'


def _last_exit(node: Mapping[str, Any]) -> str:
    last = node.get("last_exit")
    if not isinstance(last, Mapping) or last.get("code") is None:
        return "<td>-</td>"
    oom = " (OOM)" if last.get("oom") else ""
    return f'<td class="num" title="{_e(last.get("at"))}">{_e(last.get("code"))}{oom}</td>'


def _node_row(node: Mapping[str, Any], now: datetime) -> str:
    state = node.get("state")
    reason = _e(node.get("reason"))
    if node.get("next_restart_at"):
        reason += f' <span class="muted">(next restart {_e(_ago(node.get("next_restart_at"), now))})</span>'
    agent = node.get("agent")
    shown = agent and agent != node.get("host")  # an agent on the node's own host goes without saying
    host = _e(node.get("host")) + (f' <span class="muted">({_e(agent)})</span>' if shown else "")
    cells = [
        f"<td><b>{_e(node.get('name'))}</b></td>",
        f"<td>{_e(node.get('role'))}</td>",
        f'<td class="mono">{host}</td>',
        f"<td>{_badge(state)}</td>",
        _health(node),
        _lease(node),
        f'<td class="num">{_e(node.get("restarts"))}</td>',
        _last_exit(node),
        f'<td class="why">{reason}</td>',
    ]
    return f'<tr class="node tone-{tone(state)}" data-node="{_e(node.get("name"))}">{"".join(cells)}</tr>'


def _event_rows(events: list[dict[str, Any]], now: datetime) -> list[str]:
    rows = []
    for event in reversed(events[-EVENTS_SHOWN:]):
        at = event.get("at")
        rows.append(
            f'<tr class="event"><td class="mono" title="{_e(at)}">{_e(_ago(at, now) or at)}</td>'
            f"<td>{_e(event.get('node'))}</td><td>{_e(event.get('type'))}</td>"
            f'<td class="why">{_e(event.get("reason"))}</td>'
            f'<td class="why">{_e(event.get("message"))}</td></tr>'
        )
    return rows


def render(
    cluster: dict[str, Any],
    events: list[dict[str, Any]],
    now: datetime,
    local: Mapping[str, Any] | None = None,
) -> str:
    """The whole page for one `/v1/cluster` document and the last events (newest last); `local`:
    this supervisor's `/v1/status` document (its Docker Engine and last reload)."""
    head = _obj(cluster.get("cluster"))
    name, state = head.get("name"), head.get("state")
    nodes = [_node_row(_obj(n), now) for n in _list(cluster.get("nodes"))]
    body = [
        f"<h1>cluster {_e(name)} {_badge(state)}</h1>",
        f'<ul class="facts">{"".join(_facts(cluster, now, local))}</ul>',
        "<table><thead><tr><th>NAME</th><th>ROLE</th><th>HOST (AGENT)</th><th>STATE</th><th>HEALTH</th>"
        "<th>LEASE (SHARDS)</th><th>RESTARTS</th><th>LAST EXIT</th><th>REASON</th></tr></thead>",
        f'<tbody id="nodes">{"".join(nodes)}</tbody></table>',
        f'<h2>last events <span class="muted">(newest first, at most {EVENTS_SHOWN})</span></h2>',
        "<table><thead><tr><th>WHEN</th><th>NODE</th><th>TYPE</th><th>REASON</th><th>MESSAGE</th>"
        f'</tr></thead><tbody id="events">{"".join(_event_rows(events, now)) or _NO_EVENTS}</tbody></table>',
        f'<p class="muted">ceres-supervisor, {_e(now.isoformat(timespec="seconds"))}; '
        f"this page reloads every {REFRESH_S} s; the same data: <code>/v1/cluster</code>, "
        "<code>/v1/events</code>.</p>",
    ]
    return _page(f"{state} - {name} - ceres-supervisor", body)


def render_error(message: str) -> str:
    """The page when the API could not build the view (it tries again at the next reload)."""
    return _page(
        "no view - ceres-supervisor",
        [
            f"<h1>ceres-supervisor {_badge('unknown')}</h1>",
            f'<p class="alert">The status API could not build the cluster view: {_e(message)}</p>',
            f'<p class="muted">This page tries again every {REFRESH_S} s; the logs say more.</p>',
        ],
    )
