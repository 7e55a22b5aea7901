"""Talking to a running daemon from the command line: where its API is, and the status table.

The API address comes from `--url` / `--socket`, else from the file's `supervisor.listen` (read
leniently: only that table, so `status` works even where the file's secrets are not available),
else the default `127.0.0.1:5480`.
"""

from __future__ import annotations

import json
import shutil
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import aiohttp

from ceres_supervisor.model.spec import Listen, parse_listen

DEFAULT_CONFIG: Final = "/etc/ceres-supervisor/cluster.toml"
DEFAULT_LISTEN: Final = "127.0.0.1:5480"


class Unreachable(Exception):
    """No daemon answers at the address we looked at."""


@dataclass(frozen=True)
class Endpoint:
    base: str
    socket: str | None
    token: str | None
    where: str


def _token(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def endpoint(
    url: str | None, socket_path: str | None, config: str | None, token_file: str | None = None
) -> Endpoint:
    if url:
        return Endpoint(url.rstrip("/"), None, _token(token_file), url)
    if socket_path:
        return Endpoint("http://localhost", socket_path, _token(token_file), f"unix:{socket_path}")
    listen_text, file_token = DEFAULT_LISTEN, None
    path = config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else None)
    if path:
        try:
            table = tomllib.loads(Path(path).read_text()).get("supervisor", {})
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError):
            table = {}
        if isinstance(table, dict):
            listen_text = str(table.get("listen", DEFAULT_LISTEN))
            file_token = table.get("token_file") if isinstance(table.get("token_file"), str) else None
    try:
        listen = parse_listen(listen_text)
    except ValueError:
        listen = parse_listen(DEFAULT_LISTEN)
    return from_listen(
        listen, _token(token_file or file_token), f"{listen_text} (from {path or 'the default'})"
    )


def from_listen(listen: Listen, token: str | None, where: str) -> Endpoint:
    if listen.unix_path is not None:
        return Endpoint("http://localhost", listen.unix_path, token, where)
    host = "127.0.0.1" if listen.host in ("0.0.0.0", "") else listen.host
    return Endpoint(f"http://{host}:{listen.port}", None, token, where)


async def call(
    ep: Endpoint, method: str, path: str, timeout_s: float = 10.0, body: object = None
) -> tuple[int, Any]:
    connector = aiohttp.UnixConnector(path=ep.socket) if ep.socket else aiohttp.TCPConnector()
    headers = {"Authorization": f"Bearer {ep.token}"} if ep.token else {}
    try:
        async with (
            aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as session,
            session.request(method, ep.base + path, headers=headers, json=body) as response,
        ):
            raw = await response.read()
            try:
                return response.status, json.loads(raw) if raw else None
            except ValueError:
                return response.status, raw.decode(errors="replace")
    except (aiohttp.ClientError, TimeoutError, OSError) as err:
        raise Unreachable(f"no ceres-supervisor answers at {ep.where}: {err or type(err).__name__}") from None


# --- the table -----------------------------------------------------------------------------------

COLUMNS: Final = ("NAME", "ROLE", "HOST", "PORTS", "STATE", "HEALTH", "LEASE", "RESTARTS", "UPTIME", "REASON")


def _uptime(started: str | None, now: datetime) -> str:
    if not started:
        return "-"
    seconds = int((now - datetime.fromisoformat(started.replace("Z", "+00:00"))).total_seconds())
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


def _lease(node: dict[str, Any]) -> str:
    """Shards whose locks name the node, `lost`, or `-` (meta, or unknown)."""
    lease = node.get("lease")
    if not isinstance(lease, dict):
        return "-"
    if lease.get("held") is True:
        return str(len(lease.get("shards") or []))
    if lease.get("held") is False:
        return "lost"
    return "-"


def _health(node: dict[str, Any]) -> str:
    ok = (node.get("health") or {}).get("ok")
    return "ok" if ok is True else "fail" if ok is False else "-"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 3)] + "..."


def table(doc: dict[str, Any], width: int | None = None, now: datetime | None = None) -> str:
    """The status table, every line within `width` (the terminal's, at least 80)."""
    width = width or max(80, shutil.get_terminal_size((80, 24)).columns)
    now = now or datetime.now(UTC)
    cluster = doc.get("cluster") or {}
    reload = doc.get("reload") or {}
    given = cluster.get("spec_hashes")
    hashes: dict[str, Any] = given if isinstance(given, dict) else {}
    spec_hash = cluster.get("spec_hash") or (
        next(iter(set(hashes.values()))) if len(set(hashes.values())) == 1 else None
    )
    lines = [f"cluster {cluster.get('name')}: {cluster.get('state')}   spec {spec_hash or '-'}"]
    if reload.get("ok") is False:
        error = " / ".join(line.strip() for line in str(reload.get("error")).splitlines()[1:]) or reload.get(
            "error"
        )
        lines.append(f"last reload FAILED at {reload.get('at')}: {error}")
    elif reload.get("at"):
        lines.append(f"last reload: ok at {reload.get('at')}")
    if (doc.get("engine") or {}).get("ok") is False:
        lines.append(f"docker engine: {(doc.get('engine') or {}).get('error')}")
    if len(set(hashes.values())) > 1:
        listed = ", ".join(f"{host} {h}" for host, h in sorted(hashes.items()))
        lines.append(f"the agents' files differ (changes wait until they agree): {listed}")
    for agent in doc.get("agents") or []:
        if isinstance(agent, dict) and agent.get("state") == "down":
            lines.append(
                f"agent {agent.get('host')} DOWN since {agent.get('since') or agent.get('heartbeat_at')}"
            )
    rows = [COLUMNS]
    for n in doc.get("nodes") or []:
        ports = "/".join(str(p) for p in (n.get("ports") or {}).values())
        restarts = n.get("restarts")
        rows.append(
            (
                n.get("name", ""),
                n.get("role", ""),
                n.get("host", ""),
                ports,
                n.get("state", ""),
                _health(n),
                _lease(n),
                "-" if restarts is None else str(restarts),
                _uptime(n.get("started_at"), now),
                n.get("reason") or "-",
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(COLUMNS) - 1)]
    # Two spaces between columns if the reason still gets room, else one; else it gets a line of its own.
    sep = "  " if sum(widths) + 2 * len(widths) + 12 <= width else " "
    room = width - sum(widths) - len(sep) * len(widths)
    for row in rows:
        fixed = sep.join(str(c).ljust(w) for c, w in zip(row[:-1], widths, strict=True))
        reason = str(row[-1])
        if room >= 12:
            lines.append(f"{fixed}{sep}{_cut(reason, room)}".rstrip())
        else:  # narrow: the reason goes on an indented line under its node (none under the header)
            lines.append(fixed.rstrip())
            if reason not in ("-", "REASON"):
                lines.append("    " + _cut(reason, width - 4))
    for slot in doc.get("disruptions") or []:
        lines.append(f"disruption slot: {slot.get('node')} by {slot.get('host')} ({slot.get('reason')})")
    for orphan in doc.get("orphans") or []:
        lines.append(f"orphan container {orphan.get('name')} (not in the file; `down` removes it)")
    return "\n".join(_cut(line, width) for line in lines)
