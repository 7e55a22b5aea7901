"""The coordination store's content as this agent sees it (README, Several machines). Pure.

`apply` folds etcd keys (a full read, or a watch's puts and deletes) into a `StoreView`; a record
another agent wrote that does not parse is kept aside as `malformed`, never trusted and never
fatal. `down_reason` says why a published node counts against the disruption budget.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol


class KeyValue(Protocol):
    """An etcd key and its value (`etcd.KeyValue` is one)."""

    @property
    def key(self) -> bytes: ...
    @property
    def value(self) -> bytes: ...


SIGNIFICANT: Final = (
    "state",
    "reason",
    "container_id",
    "restarts",
    "started_at",
    "last_exit",
    "next_restart_at",
)
"""What makes a node's record worth writing again (a probe's timestamp alone does not)."""


def prefix(cluster: str) -> bytes:
    return f"/ceres-supervisor/{cluster}/".encode()


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class AgentRecord:
    host: str
    pid: int
    version: str
    listen: str
    spec_hash: str
    started_at: str
    heartbeat_at: str
    nodes: tuple[str, ...] = ()
    """The nodes this agent runs."""
    outdated: tuple[str, ...] = ()
    """Its nodes whose container still runs another spec than its file (a rolling change)."""

    def encode(self) -> bytes:
        doc = dict(self.__dict__)
        doc["nodes"], doc["outdated"] = list(self.nodes), list(self.outdated)
        return json.dumps(doc).encode()

    @classmethod
    def decode(cls, raw: bytes) -> AgentRecord:
        """Raises ValueError on anything that is not a well-formed record."""
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        text = {
            k: doc.get(k) for k in ("host", "version", "listen", "spec_hash", "started_at", "heartbeat_at")
        }
        if not all(isinstance(v, str) for v in text.values()) or not isinstance(doc.get("pid"), int):
            raise ValueError("missing or mistyped fields")
        lists = [doc.get("nodes", []), doc.get("outdated", [])]
        if not all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in lists):
            raise ValueError("nodes/outdated are not lists of names")
        return cls(pid=doc["pid"], nodes=tuple(lists[0]), outdated=tuple(lists[1]), **text)  # type: ignore[arg-type]


@dataclass(frozen=True)
class StoreView:
    """The cluster as the store holds it, kept current by the watch."""

    revision: int = 0
    agents: Mapping[str, AgentRecord] = field(default_factory=dict)
    nodes: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    """node -> its record as its agent published it (the /v1/status node object)."""
    slots: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    paused: frozenset[str] = frozenset()
    all_paused: bool = False
    malformed: Mapping[str, str] = field(default_factory=dict)
    """key -> why it could not be read (another agent wrote something we cannot parse)."""
    departed: Mapping[str, tuple[AgentRecord, str]] = field(default_factory=dict)
    """Agents this one saw leave: their last record and when."""

    def agent_of(self, node: str) -> str | None:
        return next((host for host, a in self.agents.items() if node in a.nodes), None)


def apply(
    view: StoreView,
    root: bytes,
    kvs: Sequence[KeyValue],
    deleted: Sequence[bytes],
    revision: int,
    reset: bool = False,
) -> StoreView:
    """A new view with these puts and deletes applied (all of the store's keys when `reset`). Pure."""
    agents = {} if reset else dict(view.agents)
    nodes = {} if reset else dict(view.nodes)
    slots = {} if reset else dict(view.slots)
    paused = set() if reset else set(view.paused)
    all_paused = False if reset else view.all_paused
    malformed = {} if reset else dict(view.malformed)
    departed = dict(view.departed)
    for key in deleted:
        name = key.removeprefix(root).decode(errors="replace")
        malformed.pop(name, None)
        kind, _, item = name.partition("/")
        if kind == "agents" and item in agents:
            departed[item] = (agents.pop(item), now_text())
        elif kind == "nodes":
            nodes.pop(item, None)
        elif kind == "disruptions":
            slots.pop(item, None)
        elif kind == "paused" and item:
            paused.discard(item)
        elif name == "paused":
            all_paused = False
    for kv in kvs:
        name = kv.key.removeprefix(root).decode(errors="replace")
        kind, _, item = name.partition("/")
        try:
            if kind == "agents":
                agents[item] = AgentRecord.decode(kv.value)
                departed.pop(item, None)
            elif kind in ("nodes", "disruptions"):
                doc = json.loads(kv.value)
                needed = ("name", "role", "state") if kind == "nodes" else ("host",)
                if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) for k in needed):
                    raise ValueError(f"not an object with {', '.join(needed)}")
                (nodes if kind == "nodes" else slots)[item] = doc
            elif kind == "paused" and item:
                paused.add(item)
            elif name == "paused":
                all_paused = True
            malformed.pop(name, None)
        except (ValueError, UnicodeDecodeError) as err:
            malformed[name] = f"cannot parse: {err}"
    return StoreView(revision, agents, nodes, slots, frozenset(paused), all_paused, malformed, departed)


UNPUBLISHED: Final = "unknown: no supervisor publishes it"
"""Why a node of the file that no live agent publishes counts as down: its agent is gone (a machine
that died takes its nodes with it) or has not written it yet. Nobody can tell it serves, so it
counts against the budget, as Kubernetes counts a pod on a lost node against a disruption budget."""


def down_reason(doc: Mapping[str, Any] | None) -> str | None:
    """Why a published node counts against the budget (None: healthy with its shards)."""
    if doc is None:
        return UNPUBLISHED
    state = doc.get("state")
    lease = doc.get("lease")
    held = lease.get("held") if isinstance(lease, dict) else None
    if state == "unhealthy" and doc.get("role") == "ceresdb" and held is True:
        return None  # it fails its probes but still holds its shards: not down (see planning)
    if state != "healthy":
        return str(state)
    if held is False:
        return "without its shards"
    return None


def significant(doc: Mapping[str, Any]) -> str:
    lease = doc.get("lease")
    health = doc.get("health")
    key = [doc.get(k) for k in SIGNIFICANT]
    key.append(lease.get("held") if isinstance(lease, dict) else None)
    key.append(lease.get("shards") if isinstance(lease, dict) else None)
    key.append(health.get("ok") if isinstance(health, dict) else None)
    return json.dumps(key, sort_keys=True, default=str)
