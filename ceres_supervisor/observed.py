"""Frozen snapshots of what runs: containers, probe results, meta readiness, shard locks.

Data only. Built fresh each cycle by the reconcile loop from the engine and the prober; read by
the planner (which is pure) and by the status API.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class MetaMemberProbe:
    """One CeresMeta member: alive (HTTP health), etcd healthy, and whether it lists the cluster."""

    alive: ProbeResult
    etcd_ok: bool
    lists_cluster: bool


@dataclass(frozen=True)
class LeaseView:
    """Shard ownership from meta (topology) and from etcd (who holds each lock now)."""

    at: float
    checked_at: datetime
    assigned: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """endpoint -> shard ids meta assigned to it; empty while the cluster has no topology."""
    locked: dict[int, str] = field(default_factory=dict)
    """shard id -> endpoint named by its lock."""
    error: str | None = None

    def held(self, endpoint: str) -> tuple[bool | None, tuple[int, ...], str | None]:
        """(held, shards it holds, detail). held is None while it cannot be known."""
        mine = tuple(sorted(s for s, holder in self.locked.items() if holder == endpoint))
        if self.error is not None:
            return None, mine, self.error
        wanted = self.assigned.get(endpoint)
        if not wanted:
            return (
                None,
                mine,
                "no shards assigned yet" if not self.assigned else "no shards assigned to this node",
            )
        missing = sorted(set(wanted) - set(mine))
        if missing:
            return False, mine, f"shards {','.join(map(str, missing))} not locked by {endpoint}"
        return True, mine, None


@dataclass(frozen=True)
class Observation:
    at: float
    """Monotonic time of the observation."""
    wall: datetime
    containers: dict[str, ObservedContainer]
    """By node name; only managed containers of this cluster."""
    orphans: tuple[ObservedContainer, ...]
    """Managed containers of this cluster whose node is not in the file."""
    engine_error: str | None
    probes: dict[str, ProbeResult]
    meta: dict[str, MetaMemberProbe]
    leases: LeaseView | None
    busy: dict[str, str]
    """Node -> kind of the action in flight: the planner leaves those nodes alone."""
    failed_actions: dict[str, str] = field(default_factory=dict)
    """Node -> why its last action failed (since the previous cycle): each is a failure."""

    @property
    def meta_ready_detail(self) -> tuple[bool, str]:
        """Meta is ready when every member is alive with etcd healthy and one lists the cluster."""
        if not self.meta:
            return False, "no meta members probed yet"
        down = [n for n, m in sorted(self.meta.items()) if not (m.alive.ok and m.etcd_ok)]
        if down:
            return False, f"meta members not ready: {', '.join(down)}"
        if not any(m.lists_cluster for m in self.meta.values()):
            return False, "no meta member lists the cluster yet"
        return True, "meta ready"
