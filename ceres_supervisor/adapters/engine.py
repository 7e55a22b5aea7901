"""The Docker Engine adapter: the only module that imports `docker`.

Every SDK call runs in a thread pool, under a timeout, one logical operation per thread hop.
Observation (list, inspect) has its own small pool, so actions that hold a thread for a whole
`stop_timeout` can never starve it. A call that times out is cancelled if it has not started; an
action that has started is awaited to its end (the SDK's own socket timeout bounds it), so no call
ever runs behind the caller's back after it was reported failed. A cancelled caller waits for its
thread before re-raising. Docker's exceptions become ours (`EngineError` and subclasses). The
events stream runs in its own thread with its own connection, hands events to the loop with
`call_soon_threadsafe`, and after a break reconnects with `since` so nothing is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Final, TypeVar

import docker
import docker.errors
import requests.exceptions
import structlog

from ceres_supervisor.adapters.dockerread import EngineEvent, event_from, observed_from, status_key
from ceres_supervisor.desired.containers import (
    LABEL_CLUSTER,
    LABEL_MANAGED,
    ContainerSpec,
)
from ceres_supervisor.model.errors import CeresError
from ceres_supervisor.model.observed import ObservedContainer

log = structlog.get_logger(__name__)

T = TypeVar("T")

PULL_TIMEOUT_S: Final = 900.0
"""Budget for pulling one image (hundreds of MB from a registry)."""
CALL_TIMEOUT_S: Final = 30.0
"""Budget for one ordinary Docker call (list, inspect, create, start)."""
LIST_TIMEOUT_S: Final = 10.0
"""Budget for one observation: short, so a hung engine cannot stall the loop past the watchdog."""
LOGS_TIMEOUT_S: Final = 10.0
"""Reading a container's logs for an operator (`logs`, `describe`)."""


@dataclass
class _Inspected:
    key: str
    age_s: int | None
    container: ObservedContainer

    def changed(self, key: str, age_s: int | None) -> bool:
        return key != self.key or (age_s is not None and self.age_s is not None and age_s < self.age_s)


class EngineError(CeresError):
    """A Docker call failed."""


class EngineUnavailable(EngineError):
    """The Docker Engine does not answer."""


class EngineTimeout(EngineError):
    """A Docker call did not finish within its budget."""


class EngineNotFound(EngineError):
    """The container does not exist (any more)."""


class EngineImageMissing(EngineError):
    """The image is not present on this host."""


class EngineConflict(EngineError):
    """The name is taken or the container is in a state that forbids the call."""


def _translate(err: Exception, what: str) -> EngineError:
    if isinstance(err, docker.errors.ImageNotFound):
        return EngineImageMissing(f"{what}: image not present on this host ({err.explanation})")
    if isinstance(err, docker.errors.NotFound):
        return EngineNotFound(f"{what}: {err.explanation}")
    if isinstance(err, docker.errors.APIError):
        if err.status_code == 409:
            return EngineConflict(f"{what}: {err.explanation}")
        return EngineError(f"{what}: {err.explanation or err}")
    if isinstance(err, requests.exceptions.Timeout):
        return EngineTimeout(f"{what}: Docker did not answer in time")
    if isinstance(err, requests.exceptions.ConnectionError | docker.errors.DockerException):
        return EngineUnavailable(f"{what}: Docker Engine unavailable ({err})")
    return EngineError(f"{what}: {err}")


class Engine:
    """Async facade over the Docker SDK for the containers of one cluster."""

    def __init__(self, cluster: str, base_url: str | None = None, workers: int = 8) -> None:
        self.cluster = cluster
        self._base_url = base_url
        self._observe_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="docker-observe")
        self._action_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="docker-act")
        self._client: docker.APIClient | None = None
        self._client_lock = threading.Lock()
        self._inspected: dict[str, _Inspected] = {}
        self._stale: set[str] = set()
        self._stale_lock = threading.Lock()
        self._events_stop = threading.Event()
        self.list_timeout_s = LIST_TIMEOUT_S
        """How long one observation may take (the daemon shortens it with several machines)."""
        self._events_stream: Any = None

    # -- plumbing --
    def _socket_path(self) -> str | None:
        url = self._base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        return url.removeprefix("unix://") if url.startswith("unix://") else None

    def _check_socket(self) -> None:
        """No socket file means no engine: say so without docker-py, which leaks a socket object
        on every failed unix connect."""
        path = self._socket_path()
        if path is not None and not os.path.exists(path):
            raise EngineUnavailable(f"Docker Engine unavailable: no socket at {path} (is dockerd running?)")

    def _new_client(self, timeout: int | None) -> docker.APIClient:
        if self._base_url:
            return docker.APIClient(base_url=self._base_url, version="auto", timeout=timeout)  # type: ignore[arg-type]
        return docker.from_env(timeout=timeout).api  # type: ignore[arg-type]

    def _api(self) -> docker.APIClient:
        self._check_socket()
        with self._client_lock:
            if self._client is None:
                self._client = self._new_client(int(CALL_TIMEOUT_S))
            return self._client

    async def _call(
        self, what: str, fn: Callable[[], T], timeout_s: float = CALL_TIMEOUT_S, *, observe: bool = False
    ) -> T:
        context = contextvars.copy_context()

        def run() -> T:
            try:
                return context.run(fn)
            except EngineError:
                raise
            except Exception as err:
                raise _translate(err, what) from err

        pool = self._observe_pool if observe else self._action_pool
        submitted = pool.submit(run)
        future = asyncio.wrap_future(submitted)
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(future)
        except TimeoutError:
            if submitted.cancel():  # still queued: it will never run
                raise EngineTimeout(f"{what}: no answer within {timeout_s:g}s (not started)") from None
            if observe:  # a read left running changes nothing; the next one queues behind it
                raise EngineTimeout(f"{what}: no answer within {timeout_s:g}s") from None
            log.warning("docker_call_slow", call=what, waited_s=timeout_s)
            with contextlib.suppress(Exception):
                await asyncio.shield(future)  # an action is awaited to its end: it never runs later
            raise EngineTimeout(f"{what}: no answer within {timeout_s:g}s") from None
        except asyncio.CancelledError:
            # Let the thread finish so that no call is left running behind our back.
            if not submitted.cancel():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(future), timeout=timeout_s)
            raise

    def _filters(self) -> dict[str, list[str]]:
        return {"label": [f"{LABEL_MANAGED}=true", f"{LABEL_CLUSTER}={self.cluster}"]}

    # -- observation --
    def invalidate(self, container_id: str) -> None:
        """An event said this container changed: inspect it at the next observation.

        Right after a `die`, the list can still say "running" (it does not wait for the container's
        lock); an inspect waits until dockerd has finished handling the exit, so it is the truth.
        """
        with self._stale_lock:
            self._stale.add(container_id)

    async def list_containers(self) -> list[ObservedContainer]:
        """Managed containers of this cluster (every host's); inspects only those that changed: an
        event said so, or the list's state or status did (`status_key`)."""

        def list_and_inspect() -> list[ObservedContainer]:
            api = self._api()
            with self._stale_lock:
                stale, self._stale = self._stale, set()
            try:
                summaries = api.containers(all=True, filters=self._filters())
            except Exception:
                with self._stale_lock:
                    self._stale |= stale
                raise
            result = []
            seen = set()
            for summary in summaries:
                cid = summary["Id"]
                key, age = status_key(str(summary.get("State")), str(summary.get("Status")))
                seen.add(cid)
                cached = self._inspected.get(cid)
                if cached is None or cached.changed(key, age) or cid in stale:
                    try:
                        cached = _Inspected(key, age, observed_from(api.inspect_container(cid)))
                    except docker.errors.NotFound:
                        continue
                    self._inspected[cid] = cached
                cached.age_s = age
                result.append(cached.container)
            for gone in set(self._inspected) - seen:
                del self._inspected[gone]
            return result

        return await self._call("list containers", list_and_inspect, self.list_timeout_s, observe=True)

    async def ping(self) -> None:
        await self._call("ping", lambda: self._api().ping(), timeout_s=5.0, observe=True)

    async def image_exists(self, image: str) -> bool:
        def check() -> bool:
            try:
                self._api().inspect_image(image)  # type: ignore[no-untyped-call]
            except docker.errors.ImageNotFound:
                return False
            return True

        return await self._call(f"inspect image {image}", check, observe=True)

    async def data_users(self, path: str) -> list[str]:
        """Running containers of this engine, managed or not, that mount `path` writable, or a
        directory inside it: a server started beside them would share its data directory with
        another process, which the real servers refuse (RocksDB's and etcd's lock files) or, worse,
        do not. A container that mounts a directory holding it (the supervisor's own, in a
        container, with its state directory) is not counted: it is no server on this data."""
        target = PurePosixPath(path)

        def find() -> list[str]:
            users = []
            for summary in self._api().containers(filters={"status": ["running", "paused", "restarting"]}):
                for mount in summary.get("Mounts") or []:
                    source = PurePosixPath(str(mount.get("Source") or "/nowhere/"))
                    shared = source == target or target in source.parents
                    if shared and mount.get("RW", True):
                        users.append(str((summary.get("Names") or [summary["Id"][:12]])[0]).lstrip("/"))
                        break
            return sorted(users)

        return await self._call("list containers using a directory", find, self.list_timeout_s, observe=True)

    async def pull(self, image: str) -> None:
        """`docker pull image` (the registry's errors arrive in the stream: raised as EngineError)."""

        def pull() -> None:
            for line in self._api().pull(image, stream=True, decode=True):
                if isinstance(line, dict) and line.get("error"):
                    raise EngineError(f"pull {image}: {line['error']}")

        await self._call(f"pull {image}", pull, timeout_s=PULL_TIMEOUT_S)

    async def logs_tail(self, container_id: str, lines: int = 3) -> str:
        def tail() -> str:
            raw = self._api().logs(container_id, stdout=True, stderr=True, tail=lines)
            return raw.decode(errors="replace").strip() if isinstance(raw, bytes) else ""

        return await self._call("container logs", tail, timeout_s=5.0, observe=True)

    async def logs(
        self, container_id: str, lines: int, since_s: float | None = None
    ) -> list[tuple[str, str]]:
        """The container's last `lines` log lines (stdout and stderr, in order), each with Docker's
        RFC 3339 timestamp; only those at or after `since_s` (Unix time) when given. An operator's
        read: it runs beside the actions, never in the way of the reconcile loop's observation."""

        def read() -> list[tuple[str, str]]:
            raw = self._api().logs(
                container_id, stdout=True, stderr=True, timestamps=True, tail=max(1, lines), since=since_s
            )
            text = raw.decode(errors="replace") if isinstance(raw, bytes) else ""
            found = []
            for line in text.splitlines():
                at, _, rest = line.partition(" ")
                found.append((at, rest))
            return found

        return await self._call("container logs", read, timeout_s=LOGS_TIMEOUT_S)

    # -- actions --
    async def create_and_start(self, spec: ContainerSpec) -> str:
        def create() -> str:
            api = self._api()
            host_config = api.create_host_config(
                network_mode=spec.network_mode,
                binds=[f"{m.source}:{m.target}:{'ro' if m.read_only else 'rw'}" for m in spec.mounts],
                restart_policy={"Name": "no"},  # the supervisor owns every restart
                log_config=docker.types.LogConfig(
                    type="json-file",  # rotated, and read back by `docker logs` and `logs NODE`
                    config={"max-size": spec.log_max_size, "max-file": str(spec.log_max_files)},
                ),
            )
            created = api.create_container(
                spec.image,
                name=spec.name,
                environment=spec.env,
                labels=spec.labels,
                host_config=host_config,
            )
            api.start(created["Id"])
            return str(created["Id"])

        container_id = await self._call(f"create {spec.name}", create)
        self.invalidate(container_id)
        return container_id

    async def start(self, container_id: str) -> None:
        try:
            await self._call("start container", lambda: self._api().start(container_id))
        finally:
            self.invalidate(container_id)  # the list may lag behind what we just did

    def _stop_now(self, container_id: str, timeout_s: float) -> None:
        """Blocking: SIGTERM, then SIGKILL after `timeout_s`. A paused container is unpaused first."""
        api = self._api()
        state = api.inspect_container(container_id).get("State", {})
        if state.get("Paused"):
            api.unpause(container_id)
        if state.get("Running"):
            api.stop(container_id, timeout=max(1, round(timeout_s)))

    async def stop(self, container_id: str, timeout_s: float) -> None:
        """SIGTERM, then SIGKILL after `timeout_s`. A paused container is unpaused first."""
        try:
            await self._call(
                "stop container",
                lambda: self._stop_now(container_id, timeout_s),
                timeout_s=timeout_s + CALL_TIMEOUT_S,
            )
        finally:
            self.invalidate(container_id)

    async def kill(self, container_id: str) -> None:
        """SIGKILL at once; returns when the container has exited."""

        def kill() -> None:
            api = self._api()
            try:
                api.kill(container_id, signal="SIGKILL")
            except docker.errors.APIError as err:
                if err.status_code != 409:  # 409: not running any more, which is what we want
                    raise
            api.wait(container_id, timeout=int(CALL_TIMEOUT_S), condition="not-running")

        try:
            await self._call("kill container", kill, timeout_s=2 * CALL_TIMEOUT_S)
        finally:
            self.invalidate(container_id)

    async def stop_all(self, container_ids: Sequence[str], timeout_s: float) -> dict[str, str]:
        """Stop them all at once, each on a thread of its own (never queued behind the action pool,
        however many there are): container ID -> error, for those that failed."""
        if not container_ids:
            return {}
        errors: dict[str, str] = {}
        pool = ThreadPoolExecutor(max_workers=len(container_ids), thread_name_prefix="docker-stop")

        def stop(container_id: str) -> None:
            try:
                self._stop_now(container_id, timeout_s)
            except docker.errors.NotFound:
                return
            except Exception as err:
                errors[container_id] = str(_translate(err, "stop container"))
            finally:
                self.invalidate(container_id)

        futures = [asyncio.wrap_future(pool.submit(stop, cid)) for cid in container_ids]
        try:
            # Each call ends within timeout_s (then SIGKILL) plus the HTTP call's own timeout.
            await asyncio.shield(asyncio.gather(*futures))
        finally:
            pool.shutdown(wait=False)
        return errors

    async def remove(self, container_id: str) -> None:
        def remove() -> None:
            try:
                self._api().remove_container(container_id, force=True)
            except docker.errors.NotFound:
                return

        await self._call("remove container", remove)

    # -- events --
    def watch_events(
        self,
        deliver: Callable[[EngineEvent], None],
        loop: asyncio.AbstractEventLoop,
        on_break: Callable[[str], None] = lambda _why: None,
    ) -> None:
        """Blocking: stream this cluster's container events until `stop_events()`.

        When the stream breaks (dockerd restarted, say) it reconnects with `since` set to the last
        event seen, so nothing in between is lost, and `on_break` is told (on the loop)."""
        delay_s = 0.5
        since: int | None = None
        while not self._events_stop.is_set():
            try:
                self._check_socket()
                # No read timeout: the stream is idle between events.
                client = self._new_client(None)
                try:
                    filters = {"type": "container", **self._filters()}
                    self._events_stream = client.events(decode=True, filters=filters, since=since)
                    delay_s = 0.5
                    for raw in self._events_stream:
                        if self._events_stop.is_set():
                            break
                        event = event_from(raw)
                        if event is not None:
                            since = event.at_ns // 1_000_000_000
                            loop.call_soon_threadsafe(deliver, event)
                    else:
                        if not self._events_stop.is_set():
                            raise EngineUnavailable("the events stream ended")
                finally:  # each connection has a client of its own: its socket goes with it
                    with contextlib.suppress(Exception):
                        client.close()
            except Exception as err:  # the stream ends or breaks when dockerd restarts
                if self._events_stop.is_set():
                    break
                log.warning("docker_events_interrupted", error=str(err), retry_in_s=delay_s)
                with contextlib.suppress(RuntimeError):  # the loop may be closed already
                    loop.call_soon_threadsafe(on_break, str(err))
                if since is None:
                    since = int(time.time()) - 1
            if not self._events_stop.wait(delay_s):
                delay_s = min(delay_s * 2, 5.0)

    def stop_events(self) -> None:
        self._events_stop.set()
        stream = self._events_stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()

    def close(self) -> None:
        self.stop_events()
        for pool in (self._observe_pool, self._action_pool):
            pool.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
