"""What Docker itself says was done to a cluster's containers: its event stream, recorded in a thread.

Tests judge stops and starts from here, never from the supervisor's own log. A stop the
supervisor decides is Docker's `kill` with signal 15 (what `docker stop` sends first); a crash
injected by `kill -9` of the main process is a bare `die`. A node is down by choice from that
`kill` until the next `start` of one of its containers.
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
    events: list[DockerEvent] = field(default_factory=list)
    error: BaseException | None = None
    _stream: Any = None
    _thread: threading.Thread | None = None
    _since: float = 0.0

    def __enter__(self) -> DockerEvents:
        self._since = time.time()
        self._stream = self.client.events(decode=True, since=int(self._since), filters={
            "type": "container", "label": f"io.ceres-supervisor.cluster={self.cluster}"})
        self._thread = threading.Thread(target=self._read, name="docker-events-recorder", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        try:
            for raw in self._stream:
                attributes = (raw.get("Actor") or {}).get("Attributes") or {}
                at = int(raw.get("timeNano") or 0) / 1e9
                if at < self._since:
                    continue
                self.events.append(DockerEvent(
                    at, str(raw.get("Action") or raw.get("status")).split(":")[0],
                    attributes.get("io.ceres-supervisor.node", ""), attributes.get("io.ceres-supervisor.role", ""),
                    attributes.get("io.ceres-supervisor.host", ""), str(raw.get("id", ""))[:12],
                    attributes.get("signal"), attributes.get("exitCode")))
        except Exception as err:  # a closed stream ends the thread; anything else is the test's failure
            if self._stream is not None:
                self.error = err

    def __exit__(self, *exc: object) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"the Docker event recorder failed: {self.error!r}")

    def of(self, node: str | None = None, actions: tuple[str, ...] = ()) -> list[DockerEvent]:
        self.check()
        return [e for e in self.events if (node is None or e.node == node) and (not actions or e.action in actions)]

    def chosen_stops(self, node: str | None = None) -> list[DockerEvent]:
        """Stops the supervisor decided: `kill` with SIGTERM."""
        return [e for e in self.of(node, ("kill",)) if e.signal in ("15", "SIGTERM")]

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

    def wait_for(self, what: str, timeout_s: float, node: str | None = None, action: str = "start",
                 count: int = 1) -> list[DockerEvent]:
        return wait_until(lambda: (found := self.of(node, (action,))) and len(found) >= count and found,
                          timeout_s, what)
