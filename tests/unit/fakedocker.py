"""A Docker Engine in-process: Docker's HTTP API (the calls the Docker SDK makes for
adapters/engine.py) on a unix socket, over containers kept in a dict. It speaks the real protocol,
so the SDK, the engine adapter, the observer and the daemon run unchanged against it.

What it keeps of Docker's behaviour: versioned paths, label filters, inspect documents (State with
Running/Status/ExitCode/OOMKilled/StartedAt/FinishedAt/Paused), 404 "No such container" / "No such
image", 409 for a name in use, the events stream (chunked JSON lines with Actor attributes, `since`
replayed), and the logs' multiplexed frames. A container runs nothing: `on_start` and `on_stop`
let a test stand a node's HTTP API up and down with it (as the real server binds its ports).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import struct
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

Hook = Callable[[dict[str, Any]], Awaitable[None]]


def _human(seconds: float) -> str:
    """go-units' HumanDuration (docker/go-units duration.go), as `docker ps` shows ages."""
    s = int(seconds)
    minutes, hours = s // 60, int(seconds / 3600 + 0.5)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "000Z")


class FakeDocker:
    def __init__(self, socket_path: str, images: tuple[str, ...] = ()) -> None:
        self.socket_path = socket_path
        self.containers: dict[str, dict[str, Any]] = {}
        self.images = set(images)
        """Images present; an empty set means every image is."""
        self.events: list[dict[str, Any]] = []
        self.listeners: list[asyncio.Queue[dict[str, Any] | None]] = []
        self.calls: list[str] = []
        self.on_start: Hook | None = None
        self.on_stop: Hook | None = None
        self.later_s = 0.0
        """How far ahead of the clock the list's ages are written (`_status`)."""
        self.fail: dict[str, tuple[int, str]] = {}
        """`METHOD /path-pattern` -> (status, message) answered instead (a regex on the path)."""
        self.hang = asyncio.Event()
        self.hang.set()
        """Cleared: every call waits (a Docker Engine that hangs)."""
        self.logs: dict[str, bytes] = {}
        self.registry: set[str] = set()
        """Images a pull finds (a pull of any other is refused as a registry refuses it)."""
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None

    # -- the test's hands ---------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.UnixSite(self._runner, self.socket_path).start()

    async def stop(self) -> None:
        """The Docker Engine goes away (its socket too); `start()` brings it back."""
        _unlink(self.socket_path)  # first, as dockerd: a client then finds no socket rather than a refusal
        for queue in self.listeners:
            queue.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def add(self, name: str, image: str, labels: dict[str, str], running: bool = True) -> str:
        """A container that exists before the supervisor looks (to adopt, or a foreign one)."""
        cid = self._new(name, image, labels, {})
        if running:
            self._set_running(cid)
        return cid

    async def kill(self, cid: str, code: int = 137, oom: bool = False) -> None:
        """The container's main process dies (not by the supervisor's hand)."""
        c = self.containers[cid]
        self._set_exited(cid, code, oom)
        if self.on_stop is not None:
            await self.on_stop(c)
        if oom:
            self._event(cid, "oom")
        self._event(cid, "die", exitCode=str(code))

    # -- state --------------------------------------------------------------------------------------

    def _new(self, name: str, image: str, labels: dict[str, str], body: dict[str, Any]) -> str:
        cid = f"{next(self._ids):064x}"
        self.containers[cid] = {
            "Id": cid,
            "Name": "/" + name,
            "Created": _now_text(),
            "Config": {"Image": image, "Labels": dict(labels), "Env": body.get("Env") or [], "Tty": False},
            "HostConfig": body.get("HostConfig") or {},
            "State": {"Status": "created", "Running": False, "Paused": False, "ExitCode": 0, "OOMKilled": False,
                      "Error": "", "StartedAt": "0001-01-01T00:00:00Z", "FinishedAt": "0001-01-01T00:00:00Z"},
        }  # fmt: skip
        return cid

    def _set_running(self, cid: str) -> None:
        state = self.containers[cid]["State"]
        state.update(
            Status="running", Running=True, Paused=False, ExitCode=0, OOMKilled=False, StartedAt=_now_text()
        )

    def _set_exited(self, cid: str, code: int, oom: bool = False) -> None:
        state = self.containers[cid]["State"]
        state.update(
            Status="exited", Running=False, Paused=False, ExitCode=code, OOMKilled=oom, FinishedAt=_now_text()
        )

    def _event(self, cid: str, action: str, **extra: str) -> None:
        c = self.containers.get(cid)
        attributes = {
            **(c["Config"]["Labels"] if c else {}),
            "name": c["Name"].lstrip("/") if c else "",
            **extra,
        }
        now = time.time_ns()
        event = {
            "status": action, "id": cid, "from": c["Config"]["Image"] if c else "", "Type": "container",
            "Action": action, "Actor": {"ID": cid, "Attributes": attributes}, "scope": "local",
            "time": now // 1_000_000_000, "timeNano": now,
        }  # fmt: skip
        self.events.append(event)
        for queue in self.listeners:
            queue.put_nowait(event)

    # -- the API ------------------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = re.sub(r"^/v\d+\.\d+", "", request.path)
        self.calls.append(f"{request.method} {path}")
        await self.hang.wait()
        for pattern, (status, message) in self.fail.items():
            method, _, regex = pattern.partition(" ")
            if method == request.method and re.fullmatch(regex, path):
                return web.json_response({"message": message}, status=status)
        routes: list[tuple[str, str, Callable[..., Awaitable[web.StreamResponse]]]] = [
            ("GET", r"/_ping", self._ping),
            ("GET", r"/version", self._version),
            ("GET", r"/containers/json", self._list),
            ("POST", r"/containers/create", self._create),
            ("GET", r"/containers/([^/]+)/json", self._inspect),
            ("GET", r"/containers/([^/]+)/logs", self._logs),
            ("POST", r"/containers/([^/]+)/start", self._start),
            ("POST", r"/containers/([^/]+)/stop", self._stop),
            ("POST", r"/containers/([^/]+)/unpause", self._unpause),
            ("DELETE", r"/containers/([^/]+)", self._remove),
            ("GET", r"/images/(.+)/json", self._image),
            ("POST", r"/images/create", self._pull),
            ("GET", r"/events", self._events),
        ]
        for method, regex, handler in routes:
            match = re.fullmatch(regex, path)
            if method == request.method and match:
                return await handler(request, *match.groups())
        return web.json_response({"message": f"page not found: {path}"}, status=404)

    def _find(self, ref: str) -> str:
        if ref in self.containers:
            return ref
        for cid, c in self.containers.items():
            if c["Name"].lstrip("/") == ref or cid.startswith(ref):
                return cid
        raise web.HTTPNotFound(
            text=json.dumps({"message": f"No such container: {ref}"}), content_type="application/json"
        )

    async def _ping(self, _request: web.Request) -> web.StreamResponse:
        return web.Response(text="OK")

    async def _version(self, _request: web.Request) -> web.StreamResponse:
        return web.json_response({"ApiVersion": "1.41", "MinAPIVersion": "1.12", "Version": "20.10.24-fake"})

    def _matches(self, c: dict[str, Any], filters: dict[str, list[str]]) -> bool:
        labels = c["Config"]["Labels"]
        for wanted in filters.get("label", []):
            key, _, value = wanted.partition("=")
            if key not in labels or (value and labels[key] != value):
                return False
        return True

    def _status(self, state: dict[str, Any]) -> str:
        """The list's `Status` in Docker's words, its age in go-units' HumanDuration (`later_s` ahead
        of the clock: a test lets time pass without waiting)."""
        if state["Status"] == "created":
            return "Created"
        running = state["Status"] in ("running", "paused")
        since = datetime.fromisoformat(state["StartedAt" if running else "FinishedAt"].replace("Z", "+00:00"))
        age = _human((datetime.now(UTC) - since).total_seconds() + self.later_s)
        if running:
            return f"Up {age}" + (" (Paused)" if state["Paused"] else "")
        return f"Exited ({state['ExitCode']}) {age} ago"

    async def _list(self, request: web.Request) -> web.StreamResponse:
        filters = json.loads(request.query.get("filters") or "{}")
        every = request.query.get("all") in ("1", "true", "True")
        listed = [
            {"Id": cid, "Names": [c["Name"]], "Image": c["Config"]["Image"], "Labels": c["Config"]["Labels"],
             "State": c["State"]["Status"], "Status": self._status(c["State"])}
            for cid, c in self.containers.items()
            if (every or c["State"]["Running"]) and self._matches(c, filters)
        ]  # fmt: skip
        return web.json_response(listed)

    async def _create(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        name = request.query.get("name", "")
        if any(c["Name"] == "/" + name for c in self.containers.values()):
            return web.json_response(
                {"message": f'Conflict. The container name "/{name}" is already in use'}, status=409
            )
        if self.images and body["Image"] not in self.images:
            return web.json_response({"message": f"No such image: {body['Image']}"}, status=404)
        cid = self._new(name, body["Image"], body.get("Labels") or {}, body)
        self._event(cid, "create")
        return web.json_response({"Id": cid, "Warnings": []}, status=201)

    async def _inspect(self, _request: web.Request, ref: str) -> web.StreamResponse:
        return web.json_response(self.containers[self._find(ref)])

    async def _logs(self, _request: web.Request, ref: str) -> web.StreamResponse:
        cid = self._find(ref)
        out = b""
        for line in self.logs.get(cid, b"").splitlines(keepends=True):
            out += struct.pack(">BxxxL", 2, len(line)) + line  # stderr frames, as a server logs
        return web.Response(body=out, content_type="application/vnd.docker.raw-stream")

    async def _start(self, _request: web.Request, ref: str) -> web.StreamResponse:
        cid = self._find(ref)
        c = self.containers[cid]
        if c["State"]["Running"]:
            return web.Response(status=304)
        self._set_running(cid)
        if self.on_start is not None:
            await self.on_start(c)
        self._event(cid, "start")
        return web.Response(status=204)

    async def _stop(self, _request: web.Request, ref: str) -> web.StreamResponse:
        cid = self._find(ref)
        c = self.containers[cid]
        if not c["State"]["Running"]:
            return web.Response(status=304)
        self._set_exited(cid, 143)
        if self.on_stop is not None:
            await self.on_stop(c)
        self._event(cid, "kill", signal="15")
        self._event(cid, "die", exitCode="143")
        self._event(cid, "stop")
        return web.Response(status=204)

    async def _unpause(self, _request: web.Request, ref: str) -> web.StreamResponse:
        cid = self._find(ref)
        self.containers[cid]["State"].update(Paused=False, Status="running")
        self._event(cid, "unpause")
        return web.Response(status=204)

    async def _remove(self, _request: web.Request, ref: str) -> web.StreamResponse:
        cid = self._find(ref)
        c = self.containers[cid]
        if c["State"]["Running"]:
            self._set_exited(cid, 137)
            if self.on_stop is not None:
                await self.on_stop(c)
            self._event(cid, "die", exitCode="137")
        self._event(cid, "destroy")
        del self.containers[cid]
        return web.Response(status=204)

    async def _image(self, _request: web.Request, name: str) -> web.StreamResponse:
        if self.images and name not in self.images:
            return web.json_response({"message": f"No such image: {name}"}, status=404)
        return web.json_response({"Id": "sha256:" + "0" * 64, "RepoTags": [name]})

    async def _pull(self, request: web.Request) -> web.StreamResponse:
        """`docker pull`: a stream of JSON progress lines; a registry's refusal is a line with
        `error` in a 200 stream, as the real Engine sends it."""
        name = f"{request.query['fromImage']}:{request.query.get('tag') or 'latest'}"
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        if name in self.registry:
            self.images.add(name)
            lines = [
                {"status": f"Pulling from {request.query['fromImage']}"},
                {"status": f"Downloaded {name}"},
            ]
        else:
            lines = [
                {"error": f"pull access denied for {request.query['fromImage']}, repository does not exist"}
            ]
        for line in lines:
            await response.write(json.dumps(line).encode() + b"\r\n")
        await response.write_eof()
        return response

    async def _events(self, request: web.Request) -> web.StreamResponse:
        filters = json.loads(request.query.get("filters") or "{}")
        since = int(request.query.get("since") or 0)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        for event in self.events if since else []:
            if event["time"] >= since:
                queue.put_nowait(event)
        self.listeners.append(queue)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        response.content_type = "application/json"
        await response.prepare(request)
        try:
            while (sent := await queue.get()) is not None:
                c = {"Config": {"Labels": sent["Actor"]["Attributes"]}}
                if self._matches(c, filters):
                    await response.write(json.dumps(sent).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.listeners.remove(queue)
        return response
