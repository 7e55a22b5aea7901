"""The status HTTP API (aiohttp) on `supervisor.listen`: TCP or a unix socket (mode 0660).

Handlers read the loop's last snapshot and never call Docker, so the API answers while Docker
hangs. Every error is JSON. On a non-loopback TCP address every route but `/healthz` needs
`Authorization: Bearer <token>`, compared in constant time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import structlog
from aiohttp import web

from . import metrics, status
from .app import Supervisor
from .planning import NodeState
from .spec import parse_listen

log = structlog.get_logger(__name__)

MAX_BODY: Final = 64 * 1024
EVENTS_DEFAULT: Final = 100
RELOAD_WAIT_S: Final = 60.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(payload: object, status_code: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(payload).encode(), status=status_code, content_type="application/json"
    )


def read_token(path: str) -> str:
    token = Path(path).read_text().strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token


class Api:
    def __init__(self, supervisor: Supervisor, token: str | None) -> None:
        self.supervisor = supervisor
        self.token = token
        self._status_cache: tuple[object, bytes] | None = None

    # -- middlewares --
    @web.middleware
    async def errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as err:
            return json_response({"error": err.reason, "status": err.status}, err.status)
        except Exception:
            log.exception("api_handler_failed", path=request.path)
            return json_response({"error": "internal error", "status": 500}, 500)

    @web.middleware
    async def auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.token is not None and request.path != "/healthz":
            header = request.headers.get("Authorization", "")
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), self.token.encode()
            ):
                return web.Response(
                    body=json.dumps({"error": "unauthorized", "status": 401}).encode(),
                    status=401,
                    content_type="application/json",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return await handler(request)

    # -- routes --
    async def healthz(self, _request: web.Request) -> web.Response:
        last = self.supervisor.last_cycle_at
        limit = 3 * self.supervisor.spec.supervisor.probe_interval + 10
        age = None if last is None else time.monotonic() - last
        ok = age is not None and age <= limit
        return json_response(
            {"ok": ok, "last_cycle_age_s": None if age is None else round(age, 3)}, 200 if ok else 503
        )

    async def readyz(self, _request: web.Request) -> web.Response:
        snap = self.supervisor.snapshot
        state = str(snap.plan.cluster_state) if snap else "starting"
        return json_response(
            {"ready": state == "healthy", "state": state}, 200 if state == "healthy" else 503
        )

    def status_body(self) -> bytes:
        sup = self.supervisor
        snap = sup.snapshot
        if snap is None:
            r = sup.reload_result
            doc = status.unobserved_document(
                sup.spec.cluster.name,
                sup.desired.spec_hash,
                sup.desired.nodes,
                (r.ok, r.error, r.at),
                sup.engine_error,
            )
            return json.dumps(doc).encode()
        key = (snap, sup.reload_result)
        if self._status_cache is not None and self._status_cache[0] == key:
            return self._status_cache[1]
        doc = status.document(
            sup.spec.cluster.name,
            snap.desired.spec_hash,
            snap.desired.nodes,
            snap.plan,
            snap.observation,
            snap.records,
            (sup.reload_result.ok, sup.reload_result.error, sup.reload_result.at),
            snap.engine_error,
        )
        body = json.dumps(doc).encode()
        self._status_cache = (key, body)
        return body

    async def v1_status(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.status_body(), content_type="application/json")

    async def v1_events(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", EVENTS_DEFAULT))
        except ValueError:
            raise web.HTTPBadRequest(reason="limit must be an integer") from None
        limit = max(0, min(limit, len(self.supervisor.events)))
        events = list(self.supervisor.events)[-limit:] if limit else []
        return json_response(
            [
                {
                    "at": status.rfc3339(e.at),
                    "node": e.node,
                    "type": e.type,
                    "reason": e.reason,
                    "message": e.message,
                }
                for e in events
            ]
        )

    async def v1_reload(self, request: web.Request) -> web.Response:
        if request.content_length and request.content_length > MAX_BODY:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length)
        waiter = self.supervisor.request_reload()
        try:
            async with asyncio.timeout(RELOAD_WAIT_S):
                result = await asyncio.shield(waiter)
        except TimeoutError:
            return json_response({"ok": None, "error": "reload still running", "at": None}, 202)
        payload = {"ok": result.ok, "error": result.error, "at": status.rfc3339(result.at)}
        return json_response(payload, 200 if result.ok else 422)

    async def metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            text=self.metrics_text(),
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    def metrics_text(self) -> str:
        sup = self.supervisor
        snap = sup.snapshot
        w = metrics.Writer()
        w.family("ceres_supervisor_node_state", "gauge", "1 for the state each node is in, 0 for the others.")
        if snap is not None:
            for node in snap.desired.nodes:
                view = snap.plan.views.get(node.name)
                for state in NodeState:
                    w.sample(
                        "ceres_supervisor_node_state",
                        {"node": node.name, "role": node.role, "state": str(state)},
                        1 if view is not None and view.state is state else 0,
                    )
        w.family(
            "ceres_supervisor_restarts_total", "counter", "Failures that led to a restart, by node and kind."
        )
        for (node_name, reason), count in sorted(sup.counters.restarts_by_reason.items()):
            w.sample("ceres_supervisor_restarts_total", {"node": node_name, "reason": reason}, count)
        w.family("ceres_supervisor_lease_held", "gauge", "1 while a CeresDB node holds all its shard locks.")
        if snap is not None and snap.observation.leases is not None:
            for node in snap.desired.ceresdb:
                held, _shards, _detail = snap.observation.leases.held(node.endpoint)
                w.sample("ceres_supervisor_lease_held", {"node": node.name}, 1 if held else 0)
        w.histogram(
            "ceres_supervisor_probe_duration_seconds",
            "Duration of health and readiness probes.",
            [({}, sup.probe_latency)],
        )
        w.histogram(
            "ceres_supervisor_reconcile_duration_seconds",
            "Duration of one reconcile cycle.",
            [({}, sup.cycle_latency)],
        )
        w.family(
            "ceres_supervisor_reload_success", "gauge", "1 if the last reload applied, 0 if it was refused."
        )
        w.sample("ceres_supervisor_reload_success", {}, 1 if sup.reload_result.ok else 0)
        return w.text()

    def application(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self.errors, self.auth])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/v1/status", self.v1_status)
        app.router.add_get("/v1/events", self.v1_events)
        app.router.add_post("/v1/reload", self.v1_reload)
        app.router.add_get("/metrics", self.metrics)
        return app


def _claim_unix_path(path: str) -> None:
    """Remove a stale socket file; refuse when another process still listens on it."""
    if not os.path.lexists(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise OSError(f"{path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)
            return
    raise OSError(f"another process is listening on {path}")


class ApiServer:
    """Binds before the loop starts (a taken port fails before any container is touched)."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.runner: web.AppRunner | None = None
        self.where = supervisor.spec.supervisor.listen

    async def start(self) -> None:
        spec = self.supervisor.spec.supervisor
        listen = parse_listen(spec.listen)
        token = read_token(spec.token_file) if spec.token_file else None
        if not listen.is_loopback and token is None:
            raise ValueError("a non-loopback listen address needs supervisor.token_file")
        self.runner = web.AppRunner(
            Api(self.supervisor, token).application(),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=2.0,
            keepalive_timeout=15.0,
        )
        await self.runner.setup()
        try:
            if listen.unix_path is not None:
                _claim_unix_path(listen.unix_path)
                site: web.BaseSite = web.UnixSite(self.runner, listen.unix_path)
                await site.start()
                os.chmod(listen.unix_path, 0o660)
            else:
                assert listen.host is not None and listen.port is not None
                site = web.TCPSite(self.runner, listen.host, listen.port, reuse_address=True, backlog=128)
                await site.start()
        except BaseException:
            await self.runner.cleanup()
            raise
        log.info("status_api_listening", listen=spec.listen, auth=token is not None)

    async def serve_forever(self) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            if self.runner is not None:
                with contextlib.suppress(Exception):
                    await self.runner.cleanup()
        raise RuntimeError("status api stopped unexpectedly")
