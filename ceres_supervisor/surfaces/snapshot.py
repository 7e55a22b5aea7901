"""What the status API shows: one immutable snapshot per loop iteration, and the events kept.

The loop builds a new `Snapshot` at the end of every iteration; the API, the metrics and the page
read nothing else of the live supervisor (no lock, no half-updated state).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from ceres_supervisor.cluster import view
from ceres_supervisor.decisions import planning
from ceres_supervisor.decisions.planning import NodeRecord, Plan
from ceres_supervisor.desired.containers import DesiredCluster
from ceres_supervisor.model.backups import BackupStatus
from ceres_supervisor.model.observed import Observation


@dataclass(frozen=True)
class Event:
    at: datetime
    node: str | None
    type: str
    reason: str | None
    message: str


@dataclass(frozen=True)
class ReloadResult:
    ok: bool
    error: str | None
    at: datetime | None


@dataclass(frozen=True)
class Coordination:
    ok: bool
    detail: str
    endpoint: str | None
    coordinated: bool
    """Several machines: stops by choice need a slot from the store."""
    revision: int = 0
    """The store revision the view reflects."""
    watch: str | None = None
    """The member the watch follows."""
    confirmed_at: float | None = None
    """Monotonic time as of which the store last confirmed the view complete (None: never)."""


@dataclass(frozen=True)
class Snapshot:
    """Everything the status API shows, as of the end of one loop iteration. Never mutated."""

    cycle: int
    loop_at: float | None
    """Monotonic time of the last loop iteration (`/healthz`)."""
    desired: DesiredCluster
    reload: ReloadResult
    probe_interval_s: float
    agent: str
    observation: Observation | None = None
    plan: Plan | None = None
    records: dict[str, NodeRecord] = field(default_factory=dict)
    engine_error: str | None = None
    store: view.StoreView = field(default_factory=view.StoreView)
    coordination: Coordination = Coordination(False, "not connected yet", None, False)
    backup: BackupStatus = field(default_factory=BackupStatus)

    @property
    def reload_ok(self) -> bool:
        return self.reload.ok

    @property
    def agents(self) -> dict[str, bool]:
        """host -> up, as the store shows them."""
        return {**dict.fromkeys(self.store.departed, False), **dict.fromkeys(self.store.agents, True)}

    @property
    def cluster_state(self) -> str:
        if self.engine_error is not None:
            return str(planning.ClusterState.UNKNOWN)
        return str(self.plan.cluster_state) if self.plan else str(planning.ClusterState.STARTING)
