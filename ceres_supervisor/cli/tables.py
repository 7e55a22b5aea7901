"""What the commands print for people: the status table (and its wide form), event lines, the
description of one node. Pure: documents in, text out.

On a terminal every line fits its width; a reason that does not fit its column goes on lines of
its own under its node, whole (wrapped, never cut). Piped, nothing is cut or wrapped: the width
is None. Every value from a document passes through `exits.one_line`, so a name or reason never
moves a terminal's cursor.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from ceres_supervisor.cli.exits import one_line

COLUMNS: Final = ("NAME", "ROLE", "HOST", "PORTS", "STATE", "HEALTH", "LEASE", "RESTARTS", "UPTIME", "REASON")
WIDE: Final = (
    "NAME",
    "ROLE",
    "HOST",
    "AGENT",
    "PORTS",
    "STATE",
    "HEALTH",
    "LEASE",
    "RESTARTS",
    "LAST EXIT",
    "UPTIME",
    "CONTAINER",
    "REASON",
)


def _text(value: object) -> str:
    return "-" if value is None or value == "" else one_line(value)


def _time(text: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def span(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 0:
        return "0s"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _uptime(started: object, now: datetime) -> str:
    at = _time(started) if started else None
    return "-" if at is None else span((now - at).total_seconds())


def _lease(node: Mapping[str, Any]) -> str:
    """Shards whose locks name the node, `lost`, or `-` (meta, or unknown)."""
    lease = node.get("lease")
    if not isinstance(lease, dict):
        return "-"
    if lease.get("held") is True:
        return str(len(lease.get("shards") or []))
    if lease.get("held") is False:
        return "lost"
    return "-"


def _health(node: Mapping[str, Any]) -> str:
    ok = (node.get("health") or {}).get("ok")
    return "ok" if ok is True else "fail" if ok is False else "-"


def _last_exit(node: Mapping[str, Any]) -> str:
    last = node.get("last_exit")
    if not isinstance(last, dict) or last.get("code") is None:
        return "-"
    return f"{last['code']}{' (OOM)' if last.get('oom') else ''}"


def _row(node: Mapping[str, Any], now: datetime, wide: bool) -> list[str]:
    ports = "/".join(str(p) for p in (node.get("ports") or {}).values())
    restarts = node.get("restarts")
    base = {
        "NAME": _text(node.get("name")),
        "ROLE": _text(node.get("role")),
        "HOST": _text(node.get("host")),
        "AGENT": _text(node.get("agent")),
        "PORTS": ports or "-",
        "STATE": _text(node.get("state")),
        "HEALTH": _health(node),
        "LEASE": _lease(node),
        "RESTARTS": "-" if restarts is None else str(restarts),
        "LAST EXIT": _last_exit(node),
        "UPTIME": _uptime(node.get("started_at"), now),
        "CONTAINER": _text(str(node.get("container_id") or "")[:12]),
        "REASON": _text(node.get("reason")),
    }
    return [base[c] for c in (WIDE if wide else COLUMNS)]


def _header(doc: Mapping[str, Any], local: Mapping[str, Any] | None) -> list[str]:
    cluster = doc.get("cluster") or {}
    given = cluster.get("spec_hashes")
    hashes: dict[str, Any] = given if isinstance(given, dict) else {}
    spec_hash = cluster.get("spec_hash") or (
        next(iter(set(hashes.values()))) if len(set(hashes.values())) == 1 else None
    )
    lines = [f"cluster {_text(cluster.get('name'))}: {_text(cluster.get('state'))}   spec {_text(spec_hash)}"]
    reload = (local or doc).get("reload") or {}
    if reload.get("ok") is False:
        error = " / ".join(line.strip() for line in str(reload.get("error")).splitlines()[1:])
        lines.append(
            f"last reload FAILED at {_text(reload.get('at'))}: {_text(error or reload.get('error'))}"
        )
    elif reload.get("at"):
        lines.append(f"last reload: ok at {_text(reload.get('at'))}")
    engine = (local or doc).get("engine") or {}
    if engine.get("ok") is False:
        lines.append(f"docker engine: {_text(engine.get('error'))}")
    coordination = doc.get("coordination") or {}
    if coordination.get("ok") is False:
        lines.append(
            f"coordination unavailable ({_text(coordination.get('detail'))}): other machines' nodes are "
            "shown as this supervisor last knew them"
        )
    leader = (doc.get("meta") or {}).get("leader", "-")
    if "agents" in doc:
        lines.append(f"meta leader: {_text(leader)}")
    if len(set(hashes.values())) > 1:
        listed = ", ".join(f"{_text(host)} {_text(h)}" for host, h in sorted(hashes.items()))
        lines.append(f"the agents' files differ (changes wait until they agree): {listed}")
    for agent in doc.get("agents") or []:
        if isinstance(agent, dict) and agent.get("state") == "down":
            since = agent.get("since") or agent.get("heartbeat_at")
            when = f"since {_text(since)}" if since else "(never seen: no supervisor runs for it)"
            lines.append(f"agent {_text(agent.get('host'))} DOWN {when}")
    return lines


def _footer(doc: Mapping[str, Any], now: datetime) -> list[str]:
    lines = []
    for slot in doc.get("disruptions") or []:
        since = _time(slot.get("since"))
        held = f", held {span((now - since).total_seconds())}" if since else ""
        lines.append(
            f"disruption slot: {_text(slot.get('node'))} by {_text(slot.get('host'))} "
            f"({_text(slot.get('reason'))}{held})"
        )
    paused = doc.get("paused") or {}
    if paused.get("all"):
        lines.append("the whole cluster is paused")
    elif paused.get("nodes"):
        lines.append("paused: " + ", ".join(_text(n) for n in paused["nodes"]))
    for orphan in doc.get("orphans") or []:
        lines.append(f"orphan container {_text(orphan.get('name'))} (not in the file; `down` removes it)")
    return lines


def table(
    doc: Mapping[str, Any],
    width: int | None = None,
    now: datetime | None = None,
    wide: bool = False,
    local: Mapping[str, Any] | None = None,
) -> str:
    """The status table of a `/v1/cluster` (or `/v1/status`) document. `width`: the terminal's
    (every line fits it, reasons wrap under their node), or None (piped: nothing cut). `local`:
    this agent's `/v1/status`, for its reload and Docker Engine lines."""
    now = now or datetime.now(UTC)
    columns: tuple[str, ...] = WIDE if wide else COLUMNS
    nodes = [n for n in doc.get("nodes") or [] if isinstance(n, dict)]
    rows = [_row(n, now, wide) for n in nodes]
    with_reason = any(r[-1] != "-" for r in rows)
    if not with_reason:  # no node has a reason: no REASON column
        columns, rows = columns[:-1], [r[:-1] for r in rows]
    widths = [max([len(columns[i])] + [len(r[i]) for r in rows]) for i in range(len(columns))]
    fixed = widths[:-1] if with_reason else widths
    sep = "  " if width is None or sum(fixed) + 2 * len(fixed) <= width else " "
    room = None if width is None else width - sum(fixed) - len(sep) * len(fixed)
    # Reasons in their column when every one fits whole; else each under its node, wrapped.
    inline = not with_reason or room is None or room >= widths[-1]
    shown = len(columns) if inline else len(columns) - 1
    body = [sep.join(c.ljust(w) for c, w in zip(columns[:shown], widths, strict=False)).rstrip()]
    for row in rows:
        body.append(sep.join(c.ljust(w) for c, w in zip(row[:shown], widths, strict=False)).rstrip())
        if not inline and row[-1] != "-" and width is not None:
            body += textwrap.wrap(
                row[-1], width=max(20, width - 4), initial_indent="    ", subsequent_indent="    "
            )
    return "\n".join([*_wrap(_header(doc, local), width), *body, *_wrap(_footer(doc, now), width)])


def _wrap(lines: list[str], width: int | None) -> list[str]:
    """Sentences (the lines around the table) wrapped, whole, to the terminal's width."""
    if width is None:
        return lines
    wrapped: list[str] = []
    for line in lines:
        wrapped += textwrap.wrap(line, width=width, subsequent_indent="  ") if len(line) > width else [line]
    return wrapped


def event_line(event: Mapping[str, Any]) -> str:
    """`AT  AGENT  NODE  TYPE  REASON: MESSAGE`, one line."""
    reason = event.get("reason")
    message = _text(event.get("message"))
    return "  ".join(
        [
            _text(event.get("at")),
            _text(event.get("agent")),
            _text(event.get("node")),
            _text(event.get("type")),
            f"{one_line(reason)}: {message}" if reason else message,
        ]
    )


def _bullets(items: Sequence[Mapping[str, Any]], key: str = "message") -> list[str]:
    out = []
    for item in items:
        reason = item.get("reason")
        extra = f"  ({one_line(reason)})" if reason and key != "reason" else ""
        out.append(f"  {_text(item.get('at'))}  {_text(item.get(key))}{extra}")
    return out or ["  -"]


def describe(doc: Mapping[str, Any], now: datetime | None = None) -> str:
    """Everything about one node, as `describe` prints it."""
    now = now or datetime.now(UTC)
    status = doc.get("status") or {}
    lines = [
        f"node {_text(doc.get('node'))} ({_text(doc.get('role'))}) on {_text(doc.get('host'))}, "
        f"run by the supervisor on {_text(doc.get('agent'))}",
        f"state:      {_text(doc.get('state'))}"
        + (f": {one_line(doc['reason'])}" if doc.get("reason") else ""),
    ]
    container = doc.get("container")
    if isinstance(container, dict):
        since = (
            container.get("started_at")
            if container.get("state") == "running"
            else container.get("finished_at")
        )
        at = _time(since) if since else None
        ago = f" {span((now - at).total_seconds())} ago" if at else ""
        verb = "started" if container.get("state") == "running" else "stopped"
        code = container.get("exit_code")
        exit_text = f", exit {code}" if container.get("state") != "running" and code is not None else ""
        oom = ", OOM killed" if container.get("oom_killed") else ""
        spec = (
            "runs the file's spec"
            if container.get("spec_current")
            else "runs an older spec (to be recreated)"
        )
        state = f"{_text(container.get('state'))}{exit_text}{oom}, {verb}{ago}"
        short = _text(str(container.get("id") or "")[:12])
        name, image = _text(container.get("name")), _text(container.get("image"))
        lines.append(f"container:  {name} {short} ({state}); {image}; {spec}")
        if container.get("error"):
            lines.append(f"            docker: {one_line(container['error'])}")
    else:
        lines.append("container:  -")
    health = status.get("health") or {}
    lines += [
        f"config:     {_text(doc.get('config_path'))}",
        f"data:       {_text(doc.get('data_dir'))}",
        f"health:     {_health(status)}"
        + (f" ({one_line(health['detail'])})" if health.get("detail") else ""),
    ]
    lease = doc.get("lease")
    if isinstance(lease, dict):
        shards = ", ".join(str(s) for s in lease.get("shards") or []) or "none"
        held = {True: "held", False: "not held", None: "unknown"}.get(lease.get("held"), "unknown")
        detail = f" ({one_line(lease['detail'])})" if lease.get("detail") else ""
        lines.append(f"lease:      {held}; shards locked: {shards}{detail}")
    slot = doc.get("slot")
    held_by = (
        f"held by {_text(slot.get('host'))} since {_text(slot.get('since'))} ({_text(slot.get('reason'))})"
        if isinstance(slot, dict)
        else "none"
    )
    lines.append(f"slot:       {held_by}")
    paused = doc.get("paused") or {}
    lines.append(
        "paused:     "
        + (
            "yes (this node)"
            if paused.get("node")
            else "yes (the whole cluster)"
            if paused.get("all")
            else "no"
        )
    )
    last = status.get("last_exit")
    restarts = status.get("restarts")
    exit_text = (
        f"; last exit {last.get('code')}{' (OOM)' if last.get('oom') else ''} at {_text(last.get('at'))}"
        if isinstance(last, dict)
        else ""
    )
    lines.append(f"restarts:   {_text(restarts)}{exit_text}")
    lines += ["state history:", *_bullets(doc.get("history") or [])]
    lines += ["last exits (as Docker reported them):", *_bullets(doc.get("exits") or [], "reason")]
    lines += ["events:", *_bullets(doc.get("events") or [])]
    logs = doc.get("logs")
    if isinstance(logs, dict):
        lines.append("last log lines:")
        lines += [f"  {one_line(line.get('text'))}" for line in logs.get("lines") or []] or ["  -"]
        if logs.get("error"):
            lines.append(f"  (cannot read them: {one_line(logs['error'])})")
    source = doc.get("source") or {}
    if source.get("complete") is False:
        lines.append(f"note: {_text(source.get('error'))}; this is what the store still says.")
    return "\n".join(lines)
