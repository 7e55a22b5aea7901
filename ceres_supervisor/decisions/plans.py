"""What a plan is made of: node and cluster states, the records kept between cycles, actions,
notes, views, the operator's controls, and the plan itself. Pure data, and the two small helpers
that word an exit and join reasons.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Final, Literal

from ceres_supervisor.decisions import backoff, leases
from ceres_supervisor.model.observed import ObservedContainer


class NodeState(StrEnum):
    PENDING = "pending"
    BLOCKED = "blocked"
    STARTING = "starting"
    HEALTHY = "healthy"
    REOPENING = "reopening"
    UNHEALTHY = "unhealthy"
    LEASE_LOST = "lease_lost"
    BACKOFF = "backoff"
    CRASHLOOP = "crashloop"
    STOPPING = "stopping"
    STOPPED = "stopped"
    PAUSED = "paused"
    REMOTE = "remote"
    UNKNOWN = "unknown"


class ClusterState(StrEnum):
    STARTING = "starting"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    STOPPED = "stopped"
    UNKNOWN = "unknown"


FAILING: Final = frozenset(
    {NodeState.UNHEALTHY, NodeState.LEASE_LOST, NodeState.BACKOFF, NodeState.CRASHLOOP}
)
STOPPING_KINDS: Final = frozenset({"stop", "recreate", "remove", "restart"})
"""Busy kinds that stop the container on purpose: its exit meanwhile is not a failure."""


@dataclass(frozen=True)
class ExitInfo:
    code: int | None
    oom: bool
    at: datetime | None


@dataclass(frozen=True)
class NodeRecord:
    """What the supervisor remembers about a node between cycles (Docker cannot tell it)."""

    count: backoff.Count = field(default_factory=backoff.Count)
    restarts: int = 0
    reason: str | None = None
    last_exit: ExitInfo | None = None
    accounted_exit: str | None = None
    """Identity of the last exit already handled (so one exit is one failure)."""
    expected_exit: str | None = None
    """Container ID the supervisor is stopping on purpose: its exit is not a failure."""
    stop_counted_for: str | None = None
    """Run whose failure was counted when its stop was granted: a retried stop counts nothing."""
    next_restart_at: float | None = None
    run_key: str | None = None
    """container ID @ StartedAt of the run being watched."""
    run_seen_at: float = 0.0
    """When the run started, on the monotonic clock: Docker's StartedAt when it is known (so that a
    supervisor restarted beside a container that never answered does not give it a fresh
    start_timeout), else when this supervisor first saw it."""
    healthy_since: float | None = None
    probe_failures: int = 0
    last_probe_at: float = 0.0
    lease: leases.Memory = field(default_factory=leases.Memory)
    budget_wait: str | None = None
    """Why a wanted stop waits for the disruption budget (an event is noted when it starts)."""

    @property
    def failures(self) -> int:
        return self.count.failures

    @property
    def crashloop(self) -> bool:
        return self.count.crashloop


@dataclass(frozen=True)
class Action:
    kind: Literal["create", "recreate", "start", "stop", "remove", "restart"]
    node: str
    container_id: str | None
    reason: str
    by_choice: bool = False
    """A stop of a running container the supervisor decided: it needs a disruption slot."""
    role: str = ""
    """The node's role when it is not in the file (a container to remove): its slot needs it."""
    while_starting: bool = False
    """A stop of a node that has not come up in this run: it waits for the node to be up (until
    stop_timeout, then SIGKILL) instead of a SIGTERM the server would take in the middle of its start."""
    as_is: bool = False
    """Start (or restart) the container as it is, its config file untouched: it runs an older release
    whose upgrade has not reached it (the file's config is the new release's)."""
    flush: bool = False
    """Flush a running CeresDB node's memtables before its stop (a planned restart, a recreate)."""


@dataclass(frozen=True)
class Note:
    """A decision worth an event line: a failure seen, a restart decided, a crashloop flagged."""

    node: str
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class LeaseStatus:
    held: bool | None
    shards: tuple[int, ...]
    detail: str | None


@dataclass(frozen=True)
class NodeView:
    state: NodeState
    reason: str | None
    next_restart_at: float | None = None
    available: bool = False
    """Healthy with its shards: it does not count against the disruption budget."""
    lease: LeaseStatus | None = None


@dataclass(frozen=True)
class UpgradeAsk:
    """The upgrade operation asks for a node's recreate to the file's release (its turn came)."""

    reason: str
    together: bool = False
    """One of an all-together step: neither the budget nor a turn is waited for (the step is the
    outage the upgrade's plan announced)."""


@dataclass(frozen=True)
class Controls:
    """The operator's say (README, Maintenance): pauses (a paused node is never started, stopped or
    restarted) and planned restarts asked for (each a stop by choice, within the budget)."""

    paused: frozenset[str] = frozenset()
    all_paused: bool = False
    restarts: Mapping[str, str] = field(default_factory=dict)
    """node -> why (the operation asking): restart it once the budget allows."""
    upgrades: Mapping[str, UpgradeAsk] = field(default_factory=dict)
    """node -> the upgrade's ask: recreate it to the file's release (an upgrade step)."""
    upgrade_note: str = ""
    """What a node that runs another release than the file's waits for, when not asked (its turn,
    the preflight, a halted or refused upgrade): it runs on as it is meanwhile."""

    def is_paused(self, node: str) -> bool:
        return self.all_paused or node in self.paused


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    records: dict[str, NodeRecord]
    views: dict[str, NodeView]
    meta_ready: bool
    meta_detail: str
    cluster_state: ClusterState
    next_wake_at: float | None
    notes: tuple[Note, ...] = field(default=())
    releasable: frozenset[str] = frozenset()
    """Nodes healthy with their shards again: a disruption slot they hold can be released."""
    retiring: Mapping[str, str] = field(default_factory=dict)
    """Containers of nodes no longer in the file whose removal waits -> why."""
    awaiting_leader: bool = False
    """A CeresDB start waits for a fresh reading of meta's leader: read it fast."""


# --- pure helpers -------------------------------------------------------------------------------


def describe_exit(c: ObservedContainer) -> str:
    if c.oom_killed:
        return f"OOM killed (exit {c.exit_code})"
    code = c.exit_code
    if code is None:
        return f"container {c.state}"
    text = f"exit {code}"
    if code > 128:
        with contextlib.suppress(ValueError):
            text += f" ({signal.Signals(code - 128).name})"
    elif code == 0 and c.role == "meta":
        text += " (CeresMeta exits 0 when etcd fails)"
    if c.error:
        text += f": {c.error}"
    return text


def join(*parts: str | None) -> str | None:
    text = "; ".join(p for p in parts if p)
    return text or None
