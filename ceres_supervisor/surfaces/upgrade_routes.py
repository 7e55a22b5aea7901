"""The upgrade's routes: `GET /v1/upgrade`, what this agent sees of the upgrade (whoever
drives it: the state, the steps left, the nodes done, the preflight of every machine, where a halted
one stopped and how to go back), and `POST /v1/nodes/<name>/upgrade`, by which the agent that
drives an upgrade asks the agent running a node for its step (202 with the operation to follow).

Behind the same token rule as every route. The body of the POST is JSON: `{"together": bool,
"spec_hash": "<the driver's file>", "who": "api", "via": "<operation> on <agent>"}`; an agent
running another file refuses (409), so that no node is recreated to a file it does not run.
"""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from ceres_supervisor.operations import restarts, upgrades
from ceres_supervisor.surfaces.control_routes import _body, _json, _who


class Daemon(Protocol):
    upgrades: upgrades.Upgrades


class Routes:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    async def status(self, _request: web.Request) -> web.Response:
        return _json(self.daemon.upgrades.document())

    async def node(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body: dict[str, Any] = await _body(request)
        who = _who(body)
        together, spec_hash = body.get("together", False), body.get("spec_hash")
        if not isinstance(together, bool) or not isinstance(spec_hash, str):
            raise web.HTTPBadRequest(reason="together is a boolean and spec_hash a string")
        try:
            op = await self.daemon.upgrades.begin_node(name, together, who, spec_hash)
        except restarts.Refused as err:
            return _json({"error": str(err), "status": 409, "operation": None}, 409)
        return _json({"operation": op.id}, 202)

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/v1/upgrade", self.status)
        app.router.add_post("/v1/nodes/{name}/upgrade", self.node)
