"""The on-call's read routes: what happened, a node's logs, and everything about one node, from any
machine (each reaches the agent that runs the node, the way a planned restart does).

- `GET /v1/cluster/events?node=N&since=T&limit=L`: the events of every agent up in the store,
  merged in time order, each with the `agent` that recorded it; `scope=local` gives this agent's
  only (what the others are asked). `agents` says which ones answered; `complete` is false when
  one did not, or the store cannot be read.
- `GET /v1/nodes/<name>/logs?lines=N&since=T`: the container's last log lines, with Docker's
  timestamps, read by the agent that runs the node (forwarded there when it is another).
- `GET /v1/nodes/<name>/describe`: the node as `/v1/cluster` shows it, its container, rendered
  config path, lease, slot, pause, state history and last exits (from the agent's journal), and
  the last log lines while it fails. From another agent's node, the answer of that agent; when it
  cannot be reached, what the store still says, with `source.complete` false and why.

Every route sits behind the API's token rule; the token goes along to the other agents (they
read the same file). An unknown node is 404 with the known names. Forwarded requests carry
`forwarded=1` and are never forwarded again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any, Final, Protocol
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from ceres_supervisor.adapters.engine import EngineError
from ceres_supervisor.decisions.planning import FAILING
from ceres_supervisor.desired.containers import DesiredNode
from ceres_supervisor.operations.pauses import Pauses
from ceres_supervisor.surfaces import journal, seams
from ceres_supervisor.surfaces.snapshot import Event, Snapshot
from ceres_supervisor.surfaces.status_document import rfc3339

EVENTS_LIMIT: Final = 200
EVENTS_MAX: Final = 10_000
LOG_LINES: Final = 100
LOG_LINES_MAX: Final = 10_000
DESCRIBE_LOG_LINES: Final = 20
DESCRIBE_EVENTS: Final = 20
DESCRIBE_EXITS: Final = 10
FORWARD_TIMEOUT_S: Final = 15.0
"""Longer than the engine's own log timeout: the other agent answers with its error first."""
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
EXIT_TYPES: Final = frozenset({"die", "oom"})
"""Docker's own reports of an exit (the journal also has the supervisor's judgement of it)."""


class LogReader(Protocol):
    async def logs(
        self, container_id: str, lines: int, since_s: float | None = None
    ) -> list[tuple[str, str]]: ...


class PauseHolder(Protocol):
    @property
    def current(self) -> Pauses: ...


class Daemon(Protocol):
    @property
    def snapshot(self) -> Snapshot: ...
    @property
    def events(self) -> Collection[Event]: ...
    @property
    def engine(self) -> LogReader: ...
    @property
    def pauses(self) -> PauseHolder: ...


def _json(payload: object, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(payload).encode(), status=status, content_type="application/json")


def _error(status: int, message: str, **more: object) -> web.HTTPException:
    """A JSON error the API's error middleware passes on as it is."""
    cls = web.HTTPException
    for candidate in (web.HTTPBadRequest, web.HTTPNotFound, web.HTTPBadGateway, web.HTTPServiceUnavailable):
        if candidate.status_code == status:
            cls = candidate
    return cls(text=json.dumps({"error": message, "status": status, **more}), content_type="application/json")


def _int(request: web.Request, key: str, default: int, most: int) -> int:
    text = request.query.get(key)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise _error(400, f"{key} must be a whole number") from None
    if not 0 <= value <= most:
        raise _error(400, f"{key} must be between 0 and {most}")
    return value


def _since(request: web.Request) -> datetime | None:
    text = request.query.get("since")
    if not text:
        return None
    at = journal.parse_time(text)
    if at is None:
        raise _error(400, "since must be an RFC 3339 time, like 2026-11-28T12:00:00Z")
    return at


async def _fetch(url: str, token: str | None) -> tuple[int, Any]:
    """GET another agent's route: (status, JSON body). Raises OSError-like errors as ConnectionError
    with a plain reason."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S)) as session,
            session.get(url, headers=headers) as response,
        ):
            raw = await response.read()
            try:
                return response.status, json.loads(raw) if raw else None
            except ValueError:
                return response.status, {"error": f"not JSON (HTTP {response.status})"}
    except TimeoutError:
        raise ConnectionError(f"no answer within {FORWARD_TIMEOUT_S:g}s") from None
    except aiohttp.ClientConnectorError as err:
        raise ConnectionError(err.strerror or "cannot connect") from None
    except (aiohttp.ClientError, OSError) as err:
        raise ConnectionError(type(err).__name__) from None


class Routes:
    def __init__(self, daemon: Daemon, token: str | None) -> None:
        self.daemon = daemon
        self.token = token

    # -- helpers --
    def _node(self, request: web.Request) -> DesiredNode:
        name = request.match_info["name"]
        desired = self.daemon.snapshot.desired
        node = desired.node(name)
        if node is None:
            raise _error(404, f"unknown node {name!r}", known=[n.name for n in desired.nodes])
        return node

    def _where(self, node: DesiredNode) -> tuple[str | None, str | None, str]:
        """(the host of the agent that runs `node`, its API's base URL, why it cannot be asked)."""
        snap = self.daemon.snapshot
        if not seams.store_reachable(snap):
            return None, None, "coordination unavailable: this supervisor cannot tell which one runs it"
        host = seams.owner(snap, node.name)
        if host is None:
            gone = next(
                ((h, at) for h, (rec, at) in snap.store.departed.items() if node.name in rec.nodes), None
            )
            if gone is not None:
                return gone[0], None, f"the supervisor on {gone[0]} is down since {gone[1]}"
            return None, None, f"no supervisor is up for {node.name} (its host is {node.host})"
        record = seams.live_agents(snap).get(host)
        url = seams.agent_url(record) if record is not None else None
        if url is None:
            return host, None, f"the supervisor on {host} publishes no address others can reach"
        return host, url, ""

    async def _forward(self, request: web.Request, base: str) -> tuple[int, Any]:
        query = urlencode({**request.query, "forwarded": "1"})
        return await _fetch(f"{base}{request.path}?{query}", self.token)

    # -- events --
    async def events(self, request: web.Request) -> web.Response:
        snap = self.daemon.snapshot
        node = request.query.get("node") or None
        if node is not None and snap.desired.node(node) is None:
            raise _error(404, f"unknown node {node!r}", known=[n.name for n in snap.desired.nodes])
        since = _since(request)
        limit = _int(request, "limit", EVENTS_LIMIT, EVENTS_MAX)
        found = [
            {**journal.document(e), "agent": snap.agent}
            for e in journal.select(list(self.daemon.events), node, since, limit)
        ]
        agents: list[dict[str, Any]] = [{"host": snap.agent, "ok": True, "error": None}]
        complete = True
        if request.query.get("scope") != "local":
            complete = seams.store_reachable(snap)
            others = {h: r for h, r in seams.live_agents(snap).items() if h != snap.agent}
            query = {"scope": "local", "limit": str(limit), **({"node": node} if node else {})}
            if since is not None:
                query["since"] = rfc3339(since) or ""

            async def ask(host: str, url: str | None) -> tuple[str, list[dict[str, Any]], str | None]:
                if url is None:
                    return host, [], "it publishes no address others can reach"
                try:
                    status, body = await _fetch(f"{url}/v1/cluster/events?{urlencode(query)}", self.token)
                except ConnectionError as err:
                    return host, [], f"does not answer ({err})"
                if status != 200 or not isinstance(body, dict) or not isinstance(body.get("events"), list):
                    why = body.get("error") if isinstance(body, dict) else None
                    return host, [], f"answered HTTP {status}" + (f": {why}" if why else "")
                return host, [e for e in body["events"] if isinstance(e, dict)], None

            answers = await asyncio.gather(*(ask(h, seams.agent_url(r)) for h, r in sorted(others.items())))
            for host, events, error in answers:
                found += [{**e, "agent": host} for e in events]
                agents.append({"host": host, "ok": error is None, "error": error})
                complete = complete and error is None
            for host, at in sorted(seams.departed(snap).items()):
                agents.append({"host": host, "ok": False, "error": f"down since {at}: its events stay on it"})
                complete = False
            found.sort(key=lambda e: (journal.parse_time(e.get("at")) or EPOCH, str(e.get("agent"))))
            found = found[-limit:] if limit else []
        return _json({"events": found, "agents": agents, "complete": complete})

    # -- logs --
    async def logs(self, request: web.Request) -> web.Response:
        node = self._node(request)
        lines = _int(request, "lines", LOG_LINES, LOG_LINES_MAX)
        since = _since(request)
        snap = self.daemon.snapshot
        if node.is_local:
            container = snap.observation.containers.get(node.name) if snap.observation else None
            if container is None:
                return _json({"node": node.name, "agent": snap.agent, "container_id": None, "lines": []})
            try:
                found = await self.daemon.engine.logs(
                    container.id, lines, since.timestamp() if since else None
                )
            except EngineError as err:
                raise _error(503, f"the Docker Engine on {snap.agent} did not give the logs: {err}") from None
            return _json(
                {
                    "node": node.name,
                    "agent": snap.agent,
                    "container_id": container.id,
                    "lines": [{"at": at, "text": text} for at, text in found],
                }
            )
        if request.query.get("forwarded"):
            raise _error(502, f"{node.name} does not run here ({snap.agent}): the agents' views differ")
        host, url, why = self._where(node)
        if url is None:
            raise _error(503, f"cannot read the logs of {node.name}: {why}", agent=host)
        try:
            status, body = await self._forward(request, url)
        except ConnectionError as err:
            raise _error(
                502, f"the supervisor on {host} ({url}) does not answer: {err}", agent=host
            ) from None
        return _json(body, status)

    # -- describe --
    async def describe(self, request: web.Request) -> web.Response:
        node = self._node(request)
        snap = self.daemon.snapshot
        if node.is_local:
            return _json(await self._describe_here(node))
        if request.query.get("forwarded"):
            raise _error(502, f"{node.name} does not run here ({snap.agent}): the agents' views differ")
        host, url, why = self._where(node)
        if url is not None:
            try:
                status, body = await self._forward(request, url)
            except ConnectionError as err:
                why = f"the supervisor on {host} ({url}) does not answer: {err}"
            else:
                if status == 200 and isinstance(body, dict):
                    return _json(body)
                error = body.get("error") if isinstance(body, dict) else None
                why = f"the supervisor on {host} answered HTTP {status}" + (f": {error}" if error else "")
        return _json(self._describe_from_store(node, host, why))

    def _common(self, node: DesiredNode) -> dict[str, Any]:
        snap = self.daemon.snapshot
        status: dict[str, Any] = next(
            (n for n in seams.cluster(snap)["nodes"] if n.get("name") == node.name), {}
        )
        pauses = self.daemon.pauses.current
        store = snap.store
        return {
            "node": node.name,
            "role": node.role,
            "host": node.host,
            "agent": status.get("agent"),
            "state": status.get("state"),
            "reason": status.get("reason"),
            "status": status,
            "config_path": str(node.config_path),
            "data_dir": str(node.data_dir),
            "lease": status.get("lease"),
            "slot": dict(store.slots[node.name]) if node.name in store.slots else None,
            "paused": {
                "node": node.name in store.paused or node.name in pauses.nodes,
                "all": store.all_paused or pauses.all,
            },
        }

    async def _describe_here(self, node: DesiredNode) -> dict[str, Any]:
        snap = self.daemon.snapshot
        doc = self._common(node)
        container = snap.observation.containers.get(node.name) if snap.observation else None
        mine = [e for e in self.daemon.events if e.node == node.name]
        logs: dict[str, Any] | None = None
        if container is not None and doc["state"] in {str(s) for s in FAILING}:
            try:
                found = await self.daemon.engine.logs(container.id, DESCRIBE_LOG_LINES)
                logs = {"lines": [{"at": at, "text": text} for at, text in found], "error": None}
            except EngineError as err:
                logs = {"lines": [], "error": str(err)}
        return {
            **doc,
            "container": None
            if container is None
            else {
                "id": container.id,
                "name": container.name,
                "image": container.image,
                "state": container.state,
                "started_at": rfc3339(container.started_at),
                "finished_at": rfc3339(container.finished_at),
                "exit_code": container.exit_code,
                "oom_killed": container.oom_killed,
                "error": container.error or None,
                "spec_hash": container.spec_hash,
                "spec_current": container.spec_hash == node.spec_hash,
            },
            "history": [journal.document(e) for e in mine if e.type == journal.STATE][-DESCRIBE_EVENTS:],
            "exits": [journal.document(e) for e in mine if e.type in EXIT_TYPES][-DESCRIBE_EXITS:],
            "events": [journal.document(e) for e in mine if e.type != journal.STATE][-DESCRIBE_EVENTS:],
            "logs": logs,
            "source": {"agent": snap.agent, "complete": True, "error": None},
        }

    def _describe_from_store(self, node: DesiredNode, host: str | None, why: str) -> dict[str, Any]:
        return {
            **self._common(node),
            "container": None,
            "history": [],
            "exits": [],
            "events": [],
            "logs": None,
            "source": {"agent": host, "complete": False, "error": why},
        }

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/v1/cluster/events", self.events)
        app.router.add_get("/v1/nodes/{name}/logs", self.logs)
        app.router.add_get("/v1/nodes/{name}/describe", self.describe)
