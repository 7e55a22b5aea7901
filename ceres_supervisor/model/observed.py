"""Frozen snapshots of what runs: containers, probe results, meta readiness, shard locks.

Data only. Built fresh each cycle by `observing` from the engine and the prober; read by the
planner (which is pure) and by the status API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class ObservedContainer:
    id: str
    name: str
    node: str
    role: str
    spec_hash: str
    state: str
    """Docker's state: created, running, paused, restarting, removing, exited or dead."""
    image: str
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str = ""
    """Docker's own error for the last start (e.g. a missing mount source), if any."""
    host: str = ""
    """The `io.ceres-supervisor.host` label: the supervisor that owns it."""
    release: str = ""
    """The release it runs (`ceresdb 1.2.4`): its release label, else what its image's tag says;
    "" when neither tells."""

    @property
    def is_running(self) -> bool:
        return self.state in ("running", "paused", "restarting")

    @property
    def run_key(self) -> str:
        """Tells one run of this container from the next (`docker start` keeps the ID)."""
        return f"{self.id}@{self.started_at.isoformat() if self.started_at else '?'}"

    @property
    def exit_identity(self) -> str:
        """Tells one exit of this container from the next one."""
        return f"{self.id}@{self.finished_at.isoformat() if self.finished_at else '?'}"


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str
    at: float
    """Monotonic time of the check."""
    checked_at: datetime
    latency_s: float = 0.0
    run_id: str = ""
    """The container run the probe was made against (`ObservedContainer.run_key`); older is stale."""
    shards: Mapping[int, str] | None = None
    """A CeresDB node's own `GET /debug/shards` (from 1.2.5): shard id -> status (Init, Opening,
    Ready, Frozen). None where the version has no such route or it could not be read."""


@dataclass(frozen=True)
class MetaMemberProbe:
    """One CeresMeta member: alive (its HTTP health route) and its etcd healthy."""

    alive: ProbeResult
    etcd_ok: bool


@dataclass(frozen=True)
class MetaLeader:
    """Who leads CeresMeta (its leader key in etcd) and whether the leader lists the cluster."""

    at: float
    member: str | None
    """The meta node (by name) whose advertise-client URL the leader key holds, or None."""
    lists_cluster: bool
    detail: str


@dataclass(frozen=True)
class ShardLock:
    holder: str
    """The endpoint (`host:grpc_port`) the lock's value names."""
    lease: int
    """The etcd lease the lock is bound to: tells one incarnation of a node from the next."""


@dataclass(frozen=True)
class LeaseView:
    """Shard ownership from meta (topology) and from etcd (who holds each lock now)."""

    at: float
    checked_at: datetime
    assigned: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """endpoint -> shard ids meta assigned to it; empty while the cluster has no topology."""
    locks: dict[int, ShardLock] = field(default_factory=dict)
    """shard id -> the lock on it."""
    error: str | None = None

    def locked_by(self, endpoint: str) -> dict[int, int]:
        """shard -> lease of every lock naming `endpoint`."""
        return {s: lock.lease for s, lock in self.locks.items() if lock.holder == endpoint}


@dataclass(frozen=True)
class Observation:
    at: float
    """Monotonic time of the observation."""
    wall: datetime
    containers: dict[str, ObservedContainer]
    """By node name; only managed containers of this cluster and of this supervisor's host."""
    orphans: tuple[ObservedContainer, ...]
    """This supervisor's managed containers whose node is not in the file."""
    engine_error: str | None
    probes: dict[str, ProbeResult]
    meta: dict[str, MetaMemberProbe]
    leader: MetaLeader | None
    leases: LeaseView | None
    busy: dict[str, str]
    """Node -> kind of the action in flight: the planner leaves those nodes alone."""
    failed_actions: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Node -> (action kind, why it failed) since the previous cycle."""
    engine_restart_exits: frozenset[str] = frozenset()
    """IDs of containers that stopped while the Docker Engine was away (restarted with it)."""
    identity_problems: Mapping[str, str] = field(default_factory=dict)
    """Local node -> why its data directory is not its own (its identity marker names another)."""

    @property
    def meta_ready_detail(self) -> tuple[bool, str]:
        """Meta is ready when every member is alive with etcd healthy, a leader holds the leader
        key, and the leader lists the cluster."""
        if not self.meta:
            return False, "no meta members probed yet"
        down = [n for n, m in sorted(self.meta.items()) if not (m.alive.ok and m.etcd_ok)]
        if down:
            return False, f"meta members not ready: {', '.join(down)}"
        if self.leader is None or self.leader.member is None:
            return False, f"no meta leader yet ({self.leader.detail if self.leader else 'not read yet'})"
        if not self.leader.lists_cluster:
            return False, f"meta leader {self.leader.member} does not list the cluster yet"
        return True, "meta ready"
