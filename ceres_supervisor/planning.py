"""Decide what to do: a pure function of desired state, observed state, memory and time.

`plan(desired, observed, records, now, jitter)` returns the actions to take, each node's state and
reason, the records to remember until the next cycle, and when to look again. No I/O, no clock,
no randomness of its own (jitter is passed in), so every decision is a table-driven unit test.

Rules (SPEC section 4): meta members start together; CeresDB nodes only once meta is ready, and
while it is not they are `blocked` (never restarted for probe or lease reasons, an exited one
waits); any exit the supervisor did not cause is a failure; the n-th failure waits 0 for n = 1,
then `backoff_initial` x 2^(n-2) +-20%, capped; the count resets after `backoff_reset` healthy;
`crashloop_failures` within `crashloop_window` marks `crashloop`; a container whose spec-hash
differs is recreated, one running container at a time, meta first, each healthy before the next.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Literal

from .desired import DesiredCluster, DesiredNode
from .observed import Observation, ObservedContainer
from .spec import SupervisorSection


class NodeState(StrEnum):
    PENDING = "pending"
    BLOCKED = "blocked"
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    LEASE_LOST = "lease_lost"
    BACKOFF = "backoff"
    CRASHLOOP = "crashloop"
    STOPPING = "stopping"
    STOPPED = "stopped"
    REMOTE = "remote"


class ClusterState(StrEnum):
    STARTING = "starting"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    STOPPED = "stopped"


FAILING = frozenset({NodeState.UNHEALTHY, NodeState.LEASE_LOST, NodeState.BACKOFF, NodeState.CRASHLOOP})


@dataclass(frozen=True)
class ExitInfo:
    code: int | None
    oom: bool
    at: datetime | None


@dataclass(frozen=True)
class NodeRecord:
    """What the supervisor remembers about a node between cycles (Docker cannot tell it)."""

    failures: int = 0
    """Failures since the count was last reset; drives the backoff delay."""
    failure_times: tuple[float, ...] = ()
    restarts: int = 0
    reason: str | None = None
    last_exit: ExitInfo | None = None
    accounted_exit: str | None = None
    """Identity of the last exit already handled (so one exit is one failure)."""
    expected_exit: str | None = None
    """Container ID the supervisor is stopping on purpose: its exit is not a failure."""
    next_restart_at: float | None = None
    crashloop: bool = False
    run_key: str | None = None
    """container ID @ StartedAt of the run being watched."""
    run_seen_at: float = 0.0
    healthy_since: float | None = None
    probe_failures: int = 0
    last_probe_at: float = 0.0
    lease_lost_since: float | None = None


@dataclass(frozen=True)
class Action:
    kind: Literal["create", "recreate", "start", "stop", "remove"]
    node: str
    container_id: str | None
    reason: str


@dataclass(frozen=True)
class Note:
    """A decision worth an event line: a failure seen, a restart decided, a crashloop flagged."""

    node: str
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class NodeView:
    state: NodeState
    reason: str | None
    next_restart_at: float | None = None


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


@dataclass(frozen=True)
class Policy:
    failure_threshold: int
    start_timeout_s: float
    lease_grace_s: float
    backoff_initial_s: float
    backoff_max_s: float
    backoff_reset_s: float
    crashloop_failures: int
    crashloop_window_s: float

    @classmethod
    def of(cls, s: SupervisorSection) -> Policy:
        return cls(
            s.failure_threshold,
            s.start_timeout,
            s.lease_grace,
            s.backoff_initial,
            s.backoff_max,
            s.backoff_reset,
            s.crashloop_failures,
            s.crashloop_window,
        )


# --- pure helpers -------------------------------------------------------------------------------


def restart_delay(n: int, policy: Policy, jitter: float) -> float:
    """Delay before the restart after the n-th failure; `jitter` in [-0.2, 0.2]."""
    if n <= 1:
        return 0.0
    base: float = policy.backoff_initial_s * 2.0 ** (n - 2)
    return min(base * (1 + jitter), policy.backoff_max_s)


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


# --- the plan -----------------------------------------------------------------------------------


@dataclass
class _Cycle:
    """Scratch state of one planning pass."""

    desired: DesiredCluster
    observed: Observation
    policy: Policy
    now: float
    jitter: Callable[[], float]
    meta_ready: bool
    meta_detail: str
    actions: list[Action] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    wakes: list[float] = field(default_factory=list)
    rolling: bool = False
    """A running container is being recreated: no second one this cycle."""

    def fail(self, node: str, rec: NodeRecord, reason: str, kind: str) -> NodeRecord:
        """Count a failure: backoff delay, crashloop flag, an event note."""
        n = rec.failures + 1
        recent = (t for t in rec.failure_times if self.now - t <= self.policy.crashloop_window_s)
        window = (*recent, self.now)
        crashloop = len(window) >= self.policy.crashloop_failures
        delay = restart_delay(n, self.policy, self.jitter())
        self.notes.append(Note(node, kind, reason, f"failure {n}; restart in {delay:.1f}s"))
        if crashloop and not rec.crashloop:
            self.notes.append(
                Note(
                    node,
                    "crashloop",
                    reason,
                    f"{len(window)} failures within {self.policy.crashloop_window_s:g}s",
                )
            )
        return replace(
            rec,
            failures=n,
            failure_times=window,
            crashloop=crashloop,
            reason=reason,
            next_restart_at=self.now + delay,
            healthy_since=None,
            lease_lost_since=None,
        )


def plan(
    desired: DesiredCluster,
    observed: Observation,
    records: dict[str, NodeRecord],
    now: float,
    jitter: Callable[[], float],
    policy: Policy,
) -> Plan:
    """Pure: the actions for this cycle and each node's state. See the module docstring."""
    ready, detail = observed.meta_ready_detail
    cycle = _Cycle(desired, observed, policy, now, jitter, ready, detail)
    cycle.rolling = any(kind == "recreate" for kind in observed.busy.values())
    views: dict[str, NodeView] = {}
    new_records: dict[str, NodeRecord] = {}
    for node in desired.nodes:  # meta first: desired.nodes is in that order
        rec = records.get(node.name)
        view, new_rec = _plan_node(cycle, node, rec)
        views[node.name], new_records[node.name] = view, new_rec
        if new_rec.next_restart_at is not None and new_rec.next_restart_at > now:
            cycle.wakes.append(new_rec.next_restart_at)
    return Plan(
        actions=tuple(cycle.actions),
        records=new_records,
        views=views,
        meta_ready=ready,
        meta_detail=detail,
        cluster_state=_cluster_state(views, ready),
        next_wake_at=min(cycle.wakes, default=None),
        notes=tuple(cycle.notes),
    )


def _plan_node(cycle: _Cycle, node: DesiredNode, rec: NodeRecord | None) -> tuple[NodeView, NodeRecord]:
    if not node.is_local:
        return NodeView(NodeState.REMOTE, f"runs on {node.host}"), rec or NodeRecord()
    observed, now, policy = cycle.observed, cycle.now, cycle.policy
    first_sight = rec is None
    rec = rec or NodeRecord()
    busy = observed.busy.get(node.name)
    c = observed.containers.get(node.name)
    blocked = node.role == "ceresdb" and not cycle.meta_ready

    # 1. An exit not yet handled: a failure, unless the supervisor caused it (or found it so).
    if c is not None and c.state in ("exited", "dead") and c.exit_identity != rec.accounted_exit:
        rec = replace(
            rec, accounted_exit=c.exit_identity, last_exit=ExitInfo(c.exit_code, c.oom_killed, c.finished_at)
        )
        if rec.expected_exit == c.id:
            rec = replace(rec, expected_exit=None)
        elif first_sight:
            rec = replace(rec, reason=f"found stopped ({describe_exit(c)})")
        else:
            rec = cycle.fail(node.name, rec, describe_exit(c), "died")
    if node.name in observed.failed_actions:
        rec = cycle.fail(node.name, rec, observed.failed_actions[node.name], "action_failed")
    # 2. Healthy long enough: the failure count starts over.
    if rec.healthy_since is not None and rec.failures and now - rec.healthy_since >= policy.backoff_reset_s:
        rec = replace(rec, failures=0, crashloop=False)
    if rec.healthy_since is not None and rec.failures:
        cycle.wakes.append(rec.healthy_since + policy.backoff_reset_s)

    if busy is not None:
        state = NodeState.STOPPING if busy == "stop" else NodeState.STARTING
        return NodeView(state, rec.reason), rec

    waiting = rec.next_restart_at is not None and now < rec.next_restart_at
    wait_state = NodeState.CRASHLOOP if rec.crashloop else NodeState.BACKOFF

    # 3. No container: create it (CeresDB only once meta is ready).
    if c is None:
        if blocked:
            return NodeView(NodeState.BLOCKED, cycle.meta_detail), rec
        if waiting:
            return NodeView(wait_state, rec.reason, rec.next_restart_at), rec
        reason = "not created yet" if rec.run_key is None else "container missing"
        cycle.actions.append(Action("create", node.name, None, reason))
        if rec.run_key is not None:
            rec = replace(rec, restarts=rec.restarts + 1)
        return NodeView(NodeState.STARTING, rec.reason), replace(rec, next_restart_at=None)

    # 4. Spec changed: recreate (a stopped one at once; a running one rolling, one at a time).
    if c.spec_hash != node.spec_hash:
        return _recreate(cycle, node, rec, c, blocked)

    # 5. Running (or paused): watch it.
    if c.is_running:
        return _watch_running(cycle, node, rec, c, blocked)

    # 6. Stopped with the right spec: start it again, after the backoff delay.
    if blocked:
        return NodeView(NodeState.BLOCKED, f"{cycle.meta_detail}; {rec.reason or 'stopped'}"), rec
    if waiting:
        return NodeView(wait_state, rec.reason, rec.next_restart_at), rec
    cycle.actions.append(Action("start", node.name, c.id, rec.reason or "stopped"))
    if not first_sight or rec.failures:
        rec = replace(rec, restarts=rec.restarts + 1)
    return NodeView(NodeState.STARTING, rec.reason), replace(rec, next_restart_at=None)


def _recreate(
    cycle: _Cycle, node: DesiredNode, rec: NodeRecord, c: ObservedContainer, blocked: bool
) -> tuple[NodeView, NodeRecord]:
    reason = f"spec changed ({c.spec_hash or 'unlabelled'} -> {node.spec_hash})"
    if not c.is_running:
        if blocked:
            return NodeView(NodeState.BLOCKED, cycle.meta_detail), rec
        cycle.actions.append(Action("recreate", node.name, c.id, reason))
        return NodeView(NodeState.STARTING, reason), rec
    others_healthy = all(
        other.name == node.name or not other.is_local or _looks_healthy(cycle, other)
        for other in cycle.desired.nodes
    )
    if cycle.rolling or blocked or not others_healthy or (node.role == "ceresdb" and _meta_changes(cycle)):
        return NodeView(
            NodeState.HEALTHY if _looks_healthy(cycle, node) else NodeState.STARTING,
            f"{reason}; waiting its turn",
        ), rec
    cycle.rolling = True
    cycle.actions.append(Action("recreate", node.name, c.id, reason))
    return NodeView(NodeState.STOPPING, reason), rec


def _meta_changes(cycle: _Cycle) -> bool:
    return any(
        (c := cycle.observed.containers.get(m.name)) is not None and c.spec_hash != m.spec_hash
        for m in cycle.desired.meta
        if m.is_local
    )


def _looks_healthy(cycle: _Cycle, node: DesiredNode) -> bool:
    c = cycle.observed.containers.get(node.name)
    probe = cycle.observed.probes.get(node.name)
    return (
        c is not None
        and c.state == "running"
        and probe is not None
        and probe.ok
        and probe.run_id == c.run_key
    )


def _watch_running(
    cycle: _Cycle, node: DesiredNode, rec: NodeRecord, c: ObservedContainer, blocked: bool
) -> tuple[NodeView, NodeRecord]:
    now, policy = cycle.now, cycle.policy
    run_key = c.run_key
    if rec.run_key != run_key:  # a new run: forget the previous run's probes
        rec = replace(
            rec,
            run_key=run_key,
            run_seen_at=now,
            healthy_since=None,
            probe_failures=0,
            last_probe_at=0.0,
            lease_lost_since=None,
            next_restart_at=None,
        )
    probe = cycle.observed.probes.get(node.name)
    if probe is not None and probe.run_id == run_key and probe.at > rec.last_probe_at:
        rec = replace(rec, last_probe_at=probe.at, probe_failures=0 if probe.ok else rec.probe_failures + 1)
        if probe.ok and rec.healthy_since is None:
            rec = replace(rec, healthy_since=now, reason=None)
    fresh = probe if probe is not None and probe.run_id == run_key else None

    if rec.healthy_since is None:  # still starting
        deadline = rec.run_seen_at + policy.start_timeout_s
        if blocked:
            return NodeView(NodeState.BLOCKED, cycle.meta_detail), rec
        if now >= deadline:
            detail = fresh.detail if fresh else "no probe answer"
            return _restart(
                cycle,
                node,
                rec,
                c,
                f"not healthy within {policy.start_timeout_s:g}s: {detail}",
                NodeState.UNHEALTHY,
                "start_timeout",
            )
        cycle.wakes.append(deadline)
        return NodeView(NodeState.STARTING, fresh.detail if fresh and not fresh.ok else None), rec

    if rec.probe_failures >= policy.failure_threshold:
        detail = f"{rec.probe_failures} failed probes: {fresh.detail if fresh else '?'}"
        if blocked:
            return NodeView(NodeState.BLOCKED, f"{cycle.meta_detail}; {detail}"), rec
        return _restart(cycle, node, rec, c, f"unhealthy: {detail}", NodeState.UNHEALTHY, "unhealthy")

    if node.role == "ceresdb":
        if blocked:
            return NodeView(NodeState.BLOCKED, cycle.meta_detail), replace(rec, lease_lost_since=None)
        leases = cycle.observed.leases
        if leases is not None and leases.at < rec.run_seen_at:
            leases = None  # read before this run of the container started: says nothing about it
        held, _shards, lease_detail = leases.held(node.endpoint) if leases else (None, (), None)
        if held is False and leases is not None:
            # The grace is measured between readings, never from one stale sample: lost in the
            # first, still lost in one taken lease_grace later (leases are read every second then).
            since = rec.lease_lost_since if rec.lease_lost_since is not None else leases.at
            rec = replace(rec, lease_lost_since=since)
            lost_for = leases.at - since
            if lost_for >= policy.lease_grace_s:
                return _restart(
                    cycle,
                    node,
                    rec,
                    c,
                    f"lease lost for {lost_for:.0f}s: {lease_detail}",
                    NodeState.LEASE_LOST,
                    "lease_lost",
                )
            return NodeView(NodeState.LEASE_LOST, lease_detail), rec
        rec = replace(rec, lease_lost_since=None)
    reason = fresh.detail if fresh is not None and not fresh.ok else None
    return NodeView(NodeState.HEALTHY, reason), rec


def _restart(
    cycle: _Cycle,
    node: DesiredNode,
    rec: NodeRecord,
    c: ObservedContainer,
    reason: str,
    state: NodeState,
    kind: str,
) -> tuple[NodeView, NodeRecord]:
    """Stop a running container the supervisor judged failed; the start follows after the delay."""
    rec = cycle.fail(node.name, rec, reason, kind)
    cycle.actions.append(Action("stop", node.name, c.id, reason))
    return NodeView(state, reason, rec.next_restart_at), replace(rec, expected_exit=c.id)


def _cluster_state(views: dict[str, NodeView], meta_ready: bool) -> ClusterState:
    local = [v for v in views.values() if v.state is not NodeState.REMOTE]
    if local and all(v.state is NodeState.STOPPED for v in local):
        return ClusterState.STOPPED
    if meta_ready and all(v.state is NodeState.HEALTHY for v in local):
        return ClusterState.HEALTHY
    if any(v.state in FAILING for v in local):
        return ClusterState.DEGRADED
    return ClusterState.STARTING
