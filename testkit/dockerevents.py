"""What Docker itself says was done to a cluster's containers: its event streams (one per Docker
Engine: several simulated machines), recorded in threads.

Tests judge stops and starts from here, never from the supervisor's own log. Every stop the
supervisor causes goes through Docker's API and shows as a `kill`: SIGTERM first (`docker stop`),
SIGKILL when the stop times out, SIGKILL for a forced remove of a running container. A crash
injected by `kill -9` of the main process shows as a bare `die`, with no `kill`. A node is down by
choice from the first `kill` after it last started until its next `start`: several `kill`s of one
stop (SIGTERM, then SIGKILL) are one stop.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import docker

from testkit.helpers import wait_until


@dataclass(frozen=True)
class DockerEvent:
    at: float
    """Docker's timeNano, in seconds."""
    action: str
    node: str
    role: str
    host: str
    container: str
    signal: str | None
    exit_code: str | None


@dataclass
class DockerEvents:
    client: docker.DockerClient
    cluster: str
    more: tuple[docker.DockerClient, ...] = ()
    """The Docker Engines of the other simulated machines: every engine's events are recorded."""
    events: list[DockerEvent] = field(default_factory=list)
    error: BaseException | None = None
    _streams: list[Any] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)
    _since: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> DockerEvents:
        self._since = time.time()
        for client in (self.client, *self.more):
            stream = client.events(
                decode=True,
                since=int(self._since),
                filters={"type": "container", "label": f"io.ceres-supervisor.cluster={self.cluster}"},
            )
            thread = threading.Thread(
                target=self._read, args=(stream,), name="docker-events-recorder", daemon=True
            )
            self._streams.append(stream)
            self._threads.append(thread)
            thread.start()
        return self

    def _read(self, stream: Any) -> None:
        try:
            for raw in stream:
                attributes = (raw.get("Actor") or {}).get("Attributes") or {}
                at = int(raw.get("timeNano") or 0) / 1e9
                if at < self._since:
                    continue
                event = DockerEvent(
                    at,
                    str(raw.get("Action") or raw.get("status")).split(":")[0],
                    attributes.get("io.ceres-supervisor.node", ""),
                    attributes.get("io.ceres-supervisor.role", ""),
                    attributes.get("io.ceres-supervisor.host", ""),
                    str(raw.get("id", ""))[:12],
                    attributes.get("signal"),
                    attributes.get("exitCode"),
                )
                with self._lock:
                    self.events.append(event)
                    self.events.sort(key=lambda e: e.at)
        except Exception as err:  # a closed stream ends the thread; anything else is the test's failure
            if stream in self._streams:
                self.error = err

    def __exit__(self, *exc: object) -> None:
        streams, self._streams = self._streams, []
        for stream in streams:
            stream.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"the Docker event recorder failed: {self.error!r}")

    def of(self, node: str | None = None, actions: tuple[str, ...] = ()) -> list[DockerEvent]:
        self.check()
        with self._lock:
            events = list(self.events)
        return [
            e for e in events if (node is None or e.node == node) and (not actions or e.action in actions)
        ]

    def chosen_stops(self, node: str | None = None) -> list[DockerEvent]:
        """Stops the supervisor caused: the first `kill` (any signal) of a node since it last
        started; the SIGKILL that ends a timed-out SIGTERM belongs to the same stop."""
        stops: list[DockerEvent] = []
        down: set[str] = set()
        for e in self.of(node, ("kill", "start")):
            if e.action == "start":
                down.discard(e.node)
            elif e.node not in down:
                down.add(e.node)
                stops.append(e)
        return stops

    def down_intervals(self, role: str | None = None) -> list[tuple[str, float, float]]:
        """(node, from, to) for each stop by choice, until that node's next start (or now)."""
        intervals = []
        for stop in self.chosen_stops():
            if role is not None and stop.role != role:
                continue
            start = next((e.at for e in self.of(stop.node, ("start",)) if e.at > stop.at), time.time())
            intervals.append((stop.node, stop.at, start))
        return intervals

    def most_down_at_once(self, role: str | None = None) -> tuple[int, list[tuple[str, float, float]]]:
        """The largest number of nodes of `role` down by choice at one moment, and the intervals."""
        intervals = self.down_intervals(role)
        edges = sorted([(a, 1) for _n, a, _b in intervals] + [(b, -1) for _n, _a, b in intervals])
        most = now = 0
        for _at, step in edges:
            now += step
            most = max(most, now)
        return most, intervals

    def wait_for(
        self, what: str, timeout_s: float, node: str | None = None, action: str = "start", count: int = 1
    ) -> list[DockerEvent]:
        return wait_until(
            lambda: (found := self.of(node, (action,))) and len(found) >= count and found, timeout_s, what
        )
