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
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

import structlog
from aiohttp import web

from ceres_supervisor.model.addresses import parse_listen
from ceres_supervisor.model.spec import DesiredState
from ceres_supervisor.surfaces import (
    cluster_document,
    control_routes,
    page,
    reports,
    status_document,
    upgrade_routes,
)
from ceres_supervisor.surfaces.inspect_routes import Daemon as InspectDaemon
from ceres_supervisor.surfaces.inspect_routes import Routes as InspectRoutes
from ceres_supervisor.surfaces.metrics import Metrics
from ceres_supervisor.surfaces.snapshot import Event, ReloadResult, Snapshot

log = structlog.get_logger(__name__)

MAX_BODY: Final = 64 * 1024
COOKIE: Final = "ceres_supervisor_token"
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


class Daemon(control_routes.Daemon, InspectDaemon, upgrade_routes.Daemon, Protocol):
    """What the API asks of the daemon: its last snapshot and a few requests. The daemon
    implements it; the API never reaches further (it reads, the loop acts)."""

    @property
    def snapshot(self) -> Snapshot: ...
    @property
    def spec(self) -> DesiredState: ...
    @property
    def events(self) -> Collection[Event]: ...
    @property
    def metrics(self) -> Metrics: ...
    def request_reload(self) -> asyncio.Future[ReloadResult]: ...


class Api:
    def __init__(self, supervisor: Daemon, token: str | None) -> None:
        self.supervisor = supervisor
        self.token = token
        self._status_cache: tuple[Snapshot, bytes] | None = None

    # -- middlewares --
    @web.middleware
    async def errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as err:
            if err.content_type == "application/json" and err.text:  # a handler's own JSON answer
                return web.Response(text=err.text, status=err.status, content_type="application/json")
            return json_response({"error": err.reason, "status": err.status}, err.status)
        except Exception:
            log.exception("api_handler_failed", path=request.path)
            return json_response({"error": "internal error", "status": 500}, 500)

    def _is_token(self, given: str) -> bool:
        assert self.token is not None
        return hmac.compare_digest(given.strip().encode(), self.token.encode())

    @web.middleware
    async def auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """On a non-loopback listener every route but /healthz needs the token: as a bearer header,
        or (for a browser on the status page) the cookie that `/?token=...` sets once."""
        if self.token is None or request.path == "/healthz":
            return await handler(request)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self._is_token(given):
            return await handler(request)
        if self._is_token(request.cookies.get(COOKIE, "")):
            return await handler(request)
        if request.path == "/" and self._is_token(request.query.get("token", "")):
            # The token leaves the address bar and the history. A plain 303 response: returning an
            # HTTPException from a middleware is deprecated in aiohttp (removed in 4).
            response = web.Response(status=303, headers={"Location": "/"})
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict", path="/")
            return response
        return web.Response(
            body=json.dumps({"error": "unauthorized", "status": 401}).encode(),
            status=401,
            content_type="application/json",
            headers={"WWW-Authenticate": "Bearer"},
        )

    # -- routes --
    async def healthz(self, _request: web.Request) -> web.Response:
        snap = self.supervisor.snapshot
        limit = 3 * snap.probe_interval_s + 10
        age = None if snap.loop_at is None else time.monotonic() - snap.loop_at
        ok = age is not None and age <= limit
        return json_response(
            {"ok": ok, "cycle": snap.cycle, "last_cycle_age_s": None if age is None else round(age, 3)},
            200 if ok else 503,
        )

    async def readyz(self, _request: web.Request) -> web.Response:
        state = self.supervisor.snapshot.cluster_state
        return json_response(
            {"ready": state == "healthy", "state": state}, 200 if state == "healthy" else 503
        )

    def status_body(self) -> bytes:
        snap = self.supervisor.snapshot
        if self._status_cache is not None and self._status_cache[0] is snap:
            return self._status_cache[1]
        r = snap.reload
        body = json.dumps(status_document.document(snap, (r.ok, r.error, r.at))).encode()
        self._status_cache = (snap, body)
        return body

    async def v1_cluster(self, _request: web.Request) -> web.Response:
        """The whole cluster; 503 with what this agent knows while the store is away."""
        doc = self.v1_cluster_document()
        return json_response(doc, 200 if doc["coordination"]["ok"] else 503)

    def v1_cluster_document(self) -> dict[str, Any]:
        snap = self.supervisor.snapshot
        local: dict[str, dict[str, object]] = {}
        if snap.plan is not None and snap.observation is not None:
            local = dict(reports.local_documents(snap.desired, snap.plan, snap.observation, snap.records))
        c = snap.coordination
        leader = snap.observation.leader.member if snap.observation and snap.observation.leader else None
        return cluster_document.document(
            snap.desired,
            snap.agent,
            local,
            snap.store,
            {
                "ok": c.ok,
                "detail": c.detail,
                "endpoint": c.endpoint,
                "revision": c.revision,
                "watch": c.watch,
                "age_s": None if c.confirmed_at is None else round(time.monotonic() - c.confirmed_at, 3),
            },
            leader,
        )

    async def page(self, _request: web.Request) -> web.Response:
        """The read-only status page: the /v1/cluster document and the last events, as HTML."""
        csp = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"}
        try:
            doc = self.v1_cluster_document()
        except Exception:
            log.exception("status_page_failed")
            text = page.render_error("the cluster view could not be built")
            return web.Response(text=text, status=500, content_type="text/html", headers=csp)
        events = [
            {
                "at": status_document.rfc3339(e.at),
                "node": e.node,
                "type": e.type,
                "reason": e.reason,
                "message": e.message,
            }
            for e in list(self.supervisor.events)[-page.EVENTS_SHOWN :]
        ]
        text = page.render(doc, events, datetime.now(UTC), json.loads(self.status_body()))
        return web.Response(text=text, content_type="text/html", headers=csp)

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
                    "at": status_document.rfc3339(e.at),
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
        payload = {"ok": result.ok, "error": result.error, "at": status_document.rfc3339(result.at)}
        return json_response(payload, 200 if result.ok else 422)

    async def metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.supervisor.metrics.exposition(request.headers.get("Accept"))
        return web.Response(
            body=body, headers={"Content-Type": content_type, "X-Content-Type-Options": "nosniff"}
        )

    def application(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self.errors, self.auth])
        app.router.add_get("/", self.page)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/v1/status", self.v1_status)
        app.router.add_get("/v1/cluster", self.v1_cluster)
        app.router.add_get("/v1/events", self.v1_events)
        app.router.add_post("/v1/reload", self.v1_reload)
        app.router.add_get("/metrics", self.metrics)
        control_routes.Routes(self.supervisor).add_to(app)
        InspectRoutes(self.supervisor, self.token).add_to(app)
        upgrade_routes.Routes(self.supervisor).add_to(app)
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

    def __init__(self, supervisor: Daemon) -> None:
        self.supervisor = supervisor
        self.runner: web.AppRunner | None = None
        self.where = supervisor.spec.supervisor.listen

    async def start(self) -> None:
        spec = self.supervisor.spec.supervisor
        listen = parse_listen(spec.listen)
        token = read_token(spec.token_file) if spec.token_file else None
        if not listen.is_loopback and token is None:
            raise ValueError("a non-loopback listen address needs supervisor.token_file")
        self.supervisor.operations.token = token  # other machines' APIs take the same token
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

    async def close(self) -> None:
        """Stop accepting and finish the requests in flight (within the runner's shutdown_timeout)."""
        runner, self.runner = self.runner, None
        if runner is not None:
            with contextlib.suppress(Exception):
                await runner.cleanup()

    async def serve_forever(self) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()
        raise RuntimeError("status api stopped unexpectedly")
