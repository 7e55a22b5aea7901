"""This agent's events, kept across its restarts: the last ones in memory, every one on disk.

Each event is appended as one JSON line to `<state_dir>/events-<agent>.jsonl`; when that file
would pass `max_bytes` it becomes `events-<agent>.jsonl.1` (the previous one is dropped), so
the journal never holds more than twice `max_bytes` on disk. At start the newest `kept` events
of both files are read back, so `events` and `describe` still tell what happened before a
restart. A line that does not parse (a torn last write) is skipped. Writes are plain appends
without fsync: a crash may lose the last lines, never the file; a disk that refuses writes leaves
the journal in memory only, said once in the log. One file per agent: several agents sharing a
machine (tests, the demo) share its state directory, never each other's events.

The journal also records each of this agent's nodes' state changes (`published`, once per
published snapshot): the `state` events that `describe` shows as the node's history.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

import structlog

from ceres_supervisor.decisions.planning import Plan
from ceres_supervisor.desired.containers import DesiredCluster
from ceres_supervisor.surfaces.snapshot import Event
from ceres_supervisor.surfaces.status_document import rfc3339

log = structlog.get_logger(__name__)

FILE_NAME: Final = "events.jsonl"
_SAFE: Final = re.compile(r"[^A-Za-z0-9.:-]")
KEPT: Final = 1000
"""Events kept in memory (and read back at start)."""
MAX_BYTES: Final = 1024 * 1024
"""One journal file's size before it is rotated: about 5,000 events; two files at most."""
STATE: Final = "state"
"""The type of the events that record a node's state change."""


class Snapshotlike(Protocol):
    @property
    def desired(self) -> DesiredCluster: ...
    @property
    def plan(self) -> Plan | None: ...


def document(event: Event) -> dict[str, Any]:
    """An event as the API shows it: `{at, node, type, reason, message}`."""
    return {
        "at": rfc3339(event.at),
        "node": event.node,
        "type": event.type,
        "reason": event.reason,
        "message": event.message,
    }


def parse_time(text: object) -> datetime | None:
    """An RFC 3339 time (`Z` or an offset; a naive one is UTC), or None when it does not parse."""
    if not isinstance(text, str):
        return None
    try:
        at = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def from_document(doc: Mapping[str, Any]) -> Event | None:
    """An event read back from a journal line (None for anything that is not one)."""
    at = parse_time(doc.get("at"))
    node, type_, reason, message = (doc.get(k) for k in ("node", "type", "reason", "message"))
    if at is None or not isinstance(type_, str) or not isinstance(message, str):
        return None
    if node is not None and not isinstance(node, str):
        return None
    return Event(at, node, type_, reason if isinstance(reason, str) else None, message)


def select(
    events: Iterator[Event] | list[Event],
    node: str | None = None,
    since: datetime | None = None,
    limit: int | None = None,
) -> list[Event]:
    """The events about `node` (None: all of them), at or after `since`, the newest `limit` of
    them, oldest first. Asked for a node, events about the whole cluster (no node) are left out."""
    chosen = [e for e in events if (node is None or e.node == node) and (since is None or e.at >= since)]
    return chosen[-limit:] if limit is not None and limit > 0 else [] if limit == 0 else chosen


@dataclass
class _File:
    """The journal on disk. Opened for each append (events come a few a cycle at most), so no
    handle outlives a write."""

    path: Path
    max_bytes: int
    size: int | None = None
    broken: str | None = None

    def write(self, line: bytes) -> None:
        if self.broken is not None:
            return
        try:
            if self.size is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.size = self.path.stat().st_size if self.path.exists() else 0
            if self.size and self.size + len(line) > self.max_bytes:
                self.path.replace(self.path.with_name(self.path.name + ".1"))
                self.size = 0
            with self.path.open("ab") as handle:
                handle.write(line)
            self.size += len(line)
        except OSError as err:
            self.broken = f"{err.strerror or err}: {err.filename or self.path}"
            log.warning("events_not_persisted", path=str(self.path), error=self.broken)


def _read_back(path: Path, kept: int) -> list[Event]:
    events: deque[Event] = deque(maxlen=kept)
    for part in (path.with_name(path.name + ".1"), path):
        try:
            lines = part.read_bytes().splitlines()
        except OSError:
            continue
        for raw in lines:
            try:
                doc = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                continue
            event = from_document(doc) if isinstance(doc, dict) else None
            if event is not None:
                events.append(event)
    return list(events)


def fan_out(*receivers: Callable[[Any], None]) -> Callable[[Any], None]:
    """One callable handing each published snapshot to every receiver (the journal, the metrics)."""

    def publish(snapshot: Any) -> None:
        for receive in receivers:
            receive(snapshot)

    return publish


class Journal:
    """A `Collection[Event]` (oldest first) that also writes every event to the state directory."""

    def __init__(self, path: Path | None, kept: int = KEPT, max_bytes: int = MAX_BYTES) -> None:
        self.path = path
        self._events: deque[Event] = deque(_read_back(path, kept) if path else (), maxlen=kept)
        self._file = _File(path, max_bytes) if path is not None else None
        self._states: dict[str, str] = {}

    @classmethod
    def open(cls, state_dir: str, kept: int = KEPT, agent: str = "", max_bytes: int = MAX_BYTES) -> Journal:
        """The journal of `agent` under `state_dir`: one file per agent, so that several agents
        sharing a machine (and its state directory) never read each other's events as their own."""
        name = f"events-{_SAFE.sub('_', agent)}.jsonl" if agent else FILE_NAME
        return cls(Path(state_dir) / name, kept, max_bytes)

    @property
    def persist_error(self) -> str | None:
        """Why events are no longer written to disk (kept in memory only), or None."""
        return self._file.broken if self._file is not None else None

    def append(self, event: Event) -> None:
        self._events.append(event)
        if self._file is not None:
            self._file.write(json.dumps(document(event), separators=(",", ":")).encode() + b"\n")

    def __iter__(self) -> Iterator[Event]:
        return iter(list(self._events))

    def __len__(self) -> int:
        return len(self._events)

    def __contains__(self, item: object) -> bool:
        return item in self._events

    def query(
        self, node: str | None = None, since: datetime | None = None, limit: int | None = None
    ) -> list[Event]:
        return select(list(self._events), node, since, limit)

    def published(self, snapshot: Snapshotlike, at: datetime | None = None) -> None:
        """Record a `state` event for each of this agent's nodes whose state changed since the last
        snapshot (the first snapshot after a start records where each node stands)."""
        plan = snapshot.plan
        if plan is None:
            return
        now = at or datetime.now(UTC)
        for node in snapshot.desired.nodes:
            view = plan.views.get(node.name)
            if not node.is_local or view is None:
                continue
            state, before = str(view.state), self._states.get(node.name)
            if state != before:
                self._states[node.name] = state
                message = f"{before} -> {state}" if before else f"{state} (first seen by this supervisor)"
                self.append(Event(now, node.name, STATE, view.reason, message))
