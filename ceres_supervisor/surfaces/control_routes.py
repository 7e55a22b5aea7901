"""The operator's routes (README, Maintenance): pause, resume, planned and rolling restarts, operations.

Every route here changes something, so it sits behind the same token rule as the rest of the API
(required on a non-loopback listener). A body is optional JSON, at most `api.MAX_BODY` bytes:
`{"who": "cli"}` says who asked (default "api"); a rolling restart also takes `{"role": ...}`, and
`/v1/pause` / `/v1/resume` take `{"nodes": [...]}`: those nodes at once, or none when one is unknown.
An unknown node is 404 with the known names; a restart of a node already being restarted is 409
with the running operation's id.
"""

from __future__ import annotations

import json
from typing import Any, Final, Protocol

from aiohttp import web

from ceres_supervisor.decisions.planning import NodeState, Plan
from ceres_supervisor.desired.containers import DesiredCluster
from ceres_supervisor.operations import restarts

WHO: Final = frozenset({"api", "cli"})
MAX_BODY: Final = 64 * 1024
"""The same limit as the application's client_max_size, checked before anything is read."""
NOT_RUNNING: Final = frozenset(
    {
        NodeState.PAUSED,
        NodeState.PENDING,
        NodeState.BACKOFF,
        NodeState.CRASHLOOP,
        NodeState.STOPPED,
        NodeState.BLOCKED,
    }
)
"""States in which a planned restart makes no sense: the node is not running (or paused)."""


class Daemon(Protocol):
    operations: restarts.Operations

    @property
    def current_plan(self) -> Plan | None: ...
    @property
    def current_desired(self) -> DesiredCluster: ...
    def leader(self) -> str | None: ...
    async def pause(self, nodes: frozenset[str], pause: bool, everything: bool) -> str: ...
    def spawn(self, coro: Any, name: str) -> None: ...
    def record_event(self, node: str | None, type_: str, reason: str | None, message: str) -> None: ...


def _json(payload: object, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(payload).encode(), status=status, content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length)
    try:
        doc = json.loads(await request.read() or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise web.HTTPBadRequest(reason="the body is not JSON") from None
    if not isinstance(doc, dict):
        raise web.HTTPBadRequest(reason="the body must be a JSON object")
    return doc


def _who(body: dict[str, Any]) -> str:
    """Who asked: "api" or "cli", and with `via` the operation of another agent that passed it on
    (a rolling restart crossing machines)."""
    who = body.get("who", "api")
    if not isinstance(who, str) or who not in WHO:  # a list or an object is not hashable
        raise web.HTTPBadRequest(reason="who is api or cli")
    via = body.get("via")
    if via is None:
        return str(who)
    if not isinstance(via, str) or not 0 < len(via) <= 200 or not via.isprintable():
        raise web.HTTPBadRequest(reason="via is a short printable text")
    return f"{who} via {via}"


class Routes:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def _node(self, request: web.Request) -> str:
        name = request.match_info["name"]
        desired = self.daemon.current_desired
        if desired.node(name) is None:
            raise web.HTTPNotFound(
                text=json.dumps(
                    {
                        "error": f"unknown node {name!r}",
                        "status": 404,
                        "known": [n.name for n in desired.nodes],
                    }
                ),
                content_type="application/json",
            )
        return name

    async def pause(self, request: web.Request) -> web.Response:
        return await self._pause(request, True)

    async def resume(self, request: web.Request) -> web.Response:
        return await self._pause(request, False)

    def _nodes(self, given: object) -> frozenset[str]:
        """The nodes a body names (`{"nodes": [...]}`), all known, or none is touched (404)."""
        if not isinstance(given, list) or not given or not all(isinstance(n, str) for n in given):
            raise web.HTTPBadRequest(reason="nodes is a non-empty list of node names")
        desired = self.daemon.current_desired
        unknown = sorted({n for n in given if desired.node(n) is None})
        if unknown:
            named = ("nodes " if len(unknown) > 1 else "node ") + ", ".join(map(repr, unknown))
            raise web.HTTPNotFound(
                text=json.dumps(
                    {
                        "error": f"unknown {named}: nothing was changed",
                        "status": 404,
                        "unknown": unknown,
                        "known": [n.name for n in desired.nodes],
                    }
                ),
                content_type="application/json",
            )
        return frozenset(given)

    async def _pause(self, request: web.Request, pause: bool) -> web.Response:
        """One node (`/v1/nodes/<name>/pause`), the nodes a body names, all at once or none
        (`/v1/pause` with `{"nodes": [...]}`), or the whole cluster (`/v1/pause`)."""
        by_name = "name" in request.match_info
        node = self._node(request) if by_name else None
        body = await _body(request)
        who = _who(body)
        everything = not by_name and "nodes" not in body
        nodes = frozenset({node}) if node else frozenset() if everything else self._nodes(body["nodes"])
        holds = await self.daemon.pause(nodes, pause, everything)
        what = "the whole cluster" if everything else ", ".join(sorted(nodes))
        verb = "paused" if pause else "resumed"
        for about in [None] if everything else sorted(nodes):
            self.daemon.record_event(about, verb, who, f"{what} {verb} by {who} ({holds})")
        return _json(
            {"ok": True, "nodes": sorted(nodes), "all": everything, verb: True, "holds_on": holds, "who": who}
        )

    async def restart(self, request: web.Request) -> web.Response:
        node = self._node(request)
        who = _who(await _body(request))
        plan = self.daemon.current_plan
        view = plan.views.get(node) if plan else None
        desired_node = self.daemon.current_desired.node(node)
        running = self.daemon.operations.running_on(node)
        if running is not None:
            return _json(
                {"error": f"{node} is already being restarted", "status": 409, "operation": running.id}, 409
            )
        not_running = view is None or view.state in NOT_RUNNING
        if desired_node is not None and desired_node.is_local and not_running:
            state = view.state if view else "not observed yet"
            why = (
                "resume it first"
                if view and view.state is NodeState.PAUSED
                else "the supervisor starts it itself"
            )
            return _json({"error": f"{node} is {state}: {why}", "status": 409, "operation": None}, 409)
        try:
            op = await self.daemon.operations.begin("restart", [node], who, self.daemon.spawn)
        except restarts.Busy as err:
            return _json({"error": str(err), "status": 409, "operation": err.operation}, 409)
        return _json({"operation": op.id}, 202)

    async def rolling_restart(self, request: web.Request) -> web.Response:
        body = await _body(request)
        who = _who(body)
        role = body.get("role")
        if role not in (None, "meta", "ceresdb"):
            raise web.HTTPBadRequest(reason="role is meta or ceresdb")
        nodes = restarts.order(self.daemon.current_desired, self.daemon.leader(), role)
        try:
            op = await self.daemon.operations.begin("rolling-restart", nodes, who, self.daemon.spawn)
        except restarts.Busy as err:
            return _json({"error": str(err), "status": 409, "operation": err.operation}, 409)
        except restarts.Refused as err:
            return _json({"error": str(err), "status": 409, "operation": None}, 409)
        return _json({"operation": op.id, "nodes": nodes}, 202)

    def _operation(self, request: web.Request) -> restarts.Operation:
        op = self.daemon.operations.get(request.match_info["id"])
        if op is None:
            raise web.HTTPNotFound(reason="no such operation")
        return op

    async def operation(self, request: web.Request) -> web.Response:
        return _json(self._operation(request).document())

    async def cancel(self, request: web.Request) -> web.Response:
        op = self._operation(request)
        op.cancel = True
        op.step("stop asked: the operation ends after the current node")
        return _json(op.document(), 202)

    def add_to(self, app: web.Application) -> None:
        app.router.add_post("/v1/pause", self.pause)
        app.router.add_post("/v1/resume", self.resume)
        app.router.add_post("/v1/nodes/{name}/pause", self.pause)
        app.router.add_post("/v1/nodes/{name}/resume", self.resume)
        app.router.add_post("/v1/nodes/{name}/restart", self.restart)
        app.router.add_post("/v1/rolling-restart", self.rolling_restart)
        app.router.add_get("/v1/operations/{id}", self.operation)
        app.router.add_post("/v1/operations/{id}/cancel", self.cancel)
