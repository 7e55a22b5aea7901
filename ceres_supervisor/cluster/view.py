"""The coordination store's content as this agent sees it. Pure.

`apply` folds etcd keys (a full read, or a watch's changes, one after the other in revision order)
into a `StoreView`; a record another agent wrote that does not parse is kept aside as
`malformed`, never trusted and never fatal. The view carries the revision it reflects; how fresh it
is (when the store last confirmed it) is the coordinator's to say. `down_reason` says why a
published node counts against the disruption budget.

Pauses are records, not the presence of keys: `paused` (the whole cluster) and `paused/<node>`
hold `{"paused": true|false, "since", "by"}`, so a resume is a record too. A store that comes back
empty (a re-initialised meta) then says nothing about a pause, rather than "resumed".
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
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
    "available",
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
    advertise: str = ""
    """The URL other agents reach this one's API at (remote operations go there)."""
    generation: int = 0
    """`cluster.generation` of its file: an agent with an older file removes nothing."""
    running: Mapping[str, str] = field(default_factory=dict)
    """Its nodes -> the release their container runs (`ceresdb 1.2.4`; an upgrade starts from it)."""
    preflight: Mapping[str, Any] | None = None
    """Its check of its own Docker Engine for its nodes' images (`decisions.upgrades.Preflight`)."""

    def encode(self) -> bytes:
        doc = dict(self.__dict__)
        doc["nodes"], doc["outdated"] = list(self.nodes), list(self.outdated)
        doc["running"], doc["preflight"] = dict(self.running), self.preflight
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
        advertise, generation = doc.get("advertise", ""), doc.get("generation", 0)
        if not isinstance(advertise, str) or not isinstance(generation, int) or isinstance(generation, bool):
            raise ValueError("advertise/generation mistyped")
        running, preflight = doc.get("running") or {}, doc.get("preflight")
        if not isinstance(running, dict) or not all(isinstance(v, str) for v in running.values()):
            raise ValueError("running is not a map of node to release")
        if preflight is not None and not isinstance(preflight, dict):
            raise ValueError("preflight is not an object")
        return cls(
            pid=doc["pid"],
            nodes=tuple(lists[0]),
            outdated=tuple(lists[1]),
            advertise=advertise,
            generation=generation,
            running=running,
            preflight=preflight,
            **text,  # type: ignore[arg-type]
        )

    @property
    def url(self) -> str:
        """Where this agent's API is reached: its advertised URL (older agents: its listen)."""
        if self.advertise:
            return self.advertise
        listen = self.listen.replace("0.0.0.0", "127.0.0.1")
        return listen if listen.startswith(("http://", "https://")) else f"http://{listen}"


@dataclass(frozen=True)
class StoreView:
    """The cluster as the store holds it, kept current by the watch."""

    revision: int = 0
    agents: Mapping[str, AgentRecord] = field(default_factory=dict)
    nodes: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    """node -> its record as its agent published it (the /v1/status node object)."""
    slots: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    pauses: Mapping[str, bool] = field(default_factory=dict)
    """node -> its pause record (true: paused, false: resumed); no record: the store says nothing."""
    all_paused: bool | None = None
    """The whole cluster's pause record; None: no record."""
    claims: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    """Cluster-wide single-holder keys (`operation`, `backup`): name -> the holder's record."""
    malformed: Mapping[str, str] = field(default_factory=dict)
    """key -> why it could not be read (another agent wrote something we cannot parse)."""
    departed: Mapping[str, tuple[AgentRecord, str]] = field(default_factory=dict)
    """Agents this one saw leave: their last record and when."""

    @property
    def paused(self) -> frozenset[str]:
        return frozenset(n for n, p in self.pauses.items() if p)

    def agent_of(self, node: str) -> str | None:
        return next((host for host, a in self.agents.items() if node in a.nodes), None)


def heartbeat_only(before: StoreView, after: StoreView) -> bool:
    """`after` differs from `before` by agents' heartbeats at most (and the revision): nothing the
    reconcile loop decides on. Every agent rewrites its record at each renewal (agent_ttl/3), and
    waking every loop of the cluster for each of them was most of an idle agent's work."""

    def beatless(agents: Mapping[str, AgentRecord]) -> dict[str, AgentRecord]:
        return {host: replace(a, heartbeat_at="") for host, a in agents.items()}

    return (
        beatless(before.agents) == beatless(after.agents)
        and before.nodes == after.nodes
        and before.slots == after.slots
        and before.pauses == after.pauses
        and before.all_paused == after.all_paused
        and before.claims == after.claims
        and before.malformed == after.malformed
        and before.departed == after.departed
    )


CLAIMS: Final = frozenset({"operation", "backup"})
"""Top-level keys held by one agent at a time, bound to its lease."""


def pause_record(raw: bytes) -> bool:
    """A pause record's flag; `{}` (written by earlier versions) is a pause."""
    doc = json.loads(raw) if raw else {}
    if not isinstance(doc, dict):
        raise ValueError("not an object")
    flag = doc.get("paused", True)
    if not isinstance(flag, bool):
        raise ValueError("paused is not a boolean")
    return flag


def apply(
    view: StoreView,
    root: bytes,
    changes: Sequence[tuple[bool, KeyValue]],
    revision: int,
    reset: bool = False,
) -> StoreView:
    """A new view with `changes` applied one after the other, as (deleted, key-value) in revision
    order (with `reset`, the changes are every key of a full read). Pure."""
    agents = {} if reset else dict(view.agents)
    nodes = {} if reset else dict(view.nodes)
    slots = {} if reset else dict(view.slots)
    pauses = {} if reset else dict(view.pauses)
    all_paused = None if reset else view.all_paused
    claims = {} if reset else dict(view.claims)
    malformed = {} if reset else dict(view.malformed)
    departed = dict(view.departed)
    for deleted, kv in changes:
        name = kv.key.removeprefix(root).decode(errors="replace")
        kind, _, item = name.partition("/")
        if deleted:
            malformed.pop(name, None)
            if kind == "agents" and item in agents:
                departed[item] = (agents.pop(item), now_text())
            elif kind == "nodes":
                nodes.pop(item, None)
            elif kind == "disruptions":
                slots.pop(item, None)
            elif kind == "paused" and item:
                pauses.pop(item, None)
            elif name == "paused":
                all_paused = None
            elif name in CLAIMS:
                claims.pop(name, None)
            continue
        try:
            if kind == "agents":
                agents[item] = AgentRecord.decode(kv.value)
                departed.pop(item, None)
            elif kind in ("nodes", "disruptions") or name in CLAIMS:
                doc = json.loads(kv.value)
                needed = ("name", "role", "state") if kind == "nodes" else ("host",)
                if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) for k in needed):
                    raise ValueError(f"not an object with {', '.join(needed)}")
                (nodes if kind == "nodes" else slots if kind == "disruptions" else claims)[
                    item if kind in ("nodes", "disruptions") else name
                ] = doc
            elif kind == "paused" and item:
                pauses[item] = pause_record(kv.value)
            elif name == "paused":
                all_paused = pause_record(kv.value)
            malformed.pop(name, None)
        except (ValueError, UnicodeDecodeError) as err:
            malformed[name] = f"cannot parse: {err}"
    return StoreView(
        max(revision, 0 if reset else view.revision),
        agents,
        nodes,
        slots,
        pauses,
        all_paused,
        claims,
        malformed,
        departed,
    )


def puts(kvs: Sequence[KeyValue]) -> list[tuple[bool, KeyValue]]:
    """The keys of a full read, as changes for `apply`."""
    return [(False, kv) for kv in kvs]


UNPUBLISHED: Final = "unknown: no supervisor publishes it"
"""Why a node of the file that no live agent publishes counts as down: its agent is gone (a machine
that died takes its nodes with it) or has not written it yet. Nobody can tell it serves, so it
counts against the budget, as Kubernetes counts a pod on a lost node against a disruption budget."""


def settled_slots(view: StoreView) -> frozenset[str]:
    """Nodes whose disruption slot is older than their container: started again since the slot was
    taken, the stop it was taken for is over (the slot stays until the node holds its shards). Both
    times are written by the node's own agent, on one clock; a time that does not parse settles
    nothing."""
    return frozenset(
        name
        for name, slot in view.slots.items()
        if (taken := _instant(slot.get("since"))) is not None
        and (started := _instant(view.nodes.get(name, {}).get("started_at"))) is not None
        and started > taken
    )


def _instant(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        return None
    return at if at.tzinfo is not None else None


def down_reason(doc: Mapping[str, Any] | None) -> str | None:
    """Why a published node counts against the budget (None: healthy with its shards)."""
    if doc is None:
        return UNPUBLISHED
    state = doc.get("state")
    lease = doc.get("lease")
    held = lease.get("held") if isinstance(lease, dict) else None
    if state != "healthy":
        return str(state)
    if held is False:
        return "without its shards"
    if doc.get("available") is False:
        # Healthy, yet its agent does not count it as serving: a CeresDB node whose shard locks were
        # not read since it (re)started (a recreated node answers `GET /` long before its shards are
        # back), a meta member whose etcd is not healthy. Agents before this field say nothing.
        return "lease unknown" if doc.get("role") == "ceresdb" else "etcd not healthy"
    return None


def significant(doc: Mapping[str, Any]) -> str:
    lease = doc.get("lease")
    health = doc.get("health")
    key = [doc.get(k) for k in SIGNIFICANT]
    key.append(lease.get("held") if isinstance(lease, dict) else None)
    key.append(lease.get("shards") if isinstance(lease, dict) else None)
    key.append(health.get("ok") if isinstance(health, dict) else None)
    return json.dumps(key, sort_keys=True, default=str)


@dataclass
class Identity:
    """Who this agent is; `outdated` changes during a rolling change."""

    host: str
    version: str
    listen: str
    advertise: str = ""
    generation: int = 0
    spec_hash: str = ""
    nodes: tuple[str, ...] = ()
    outdated: tuple[str, ...] = ()
    started_at: str = field(default_factory=now_text)
    running: dict[str, str] = field(default_factory=dict)
    """Its nodes -> the release their container runs (what an upgrade starts from)."""
    preflight: dict[str, Any] | None = None
    """Its check of its Docker Engine for the file's images (before an upgrade stops anything)."""

    def record(self) -> AgentRecord:
        return AgentRecord(
            self.host,
            os.getpid(),
            self.version,
            self.listen,
            self.spec_hash,
            self.started_at,
            now_text(),
            self.nodes,
            self.outdated,
            self.advertise,
            self.generation,
            dict(self.running),
            self.preflight,
        )

    def mark(self) -> tuple[object, ...]:
        """What must reach the other agents at once when it changes (not at the next heartbeat)."""
        return (
            self.spec_hash,
            self.nodes,
            self.outdated,
            self.advertise,
            self.generation,
            json.dumps([self.running, self.preflight], sort_keys=True),
        )
