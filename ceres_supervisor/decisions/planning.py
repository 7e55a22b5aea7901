"""Decide what to do: a pure function of desired state, observed state, memory and time.

`plan(...)` returns the actions to take, each node's state and reason, the records to remember
until the next cycle, and when to look again. No I/O, no clock, no randomness of its own (jitter
is passed in), so every decision is a table-driven unit test.

A pass has two steps. First every node is evaluated on its own: its state, and what it wants (a
start, a create, or a stop by choice with the reason). Then the wants are granted in order, meta
first: starts and creates always (a crash is never held back), stops by choice only within the
disruption budget (`disruption`), and recreates of running containers one at a time, meta first,
each only when every other node is healthy. Failures are counted when they happen (an exit) or
when the stop is granted (a probe, lease or start-timeout failure), once per run of a container.
Restart delays follow `backoff`; the shard-lock judgement follows `leases`.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Final, Literal

from ceres_supervisor.decisions import backoff, leases
from ceres_supervisor.decisions.backoff import Policy
from ceres_supervisor.decisions.budget import Budget, blockers, describe
from ceres_supervisor.desired.containers import DesiredCluster, DesiredNode
from ceres_supervisor.model import versions
from ceres_supervisor.model.observed import Observation, ObservedContainer

__all__ = [
    "Action",
    "Budget",
    "ClusterState",
    "Controls",
    "NodeRecord",
    "NodeState",
    "Plan",
    "Policy",
    "plan",
]


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
    keeps_shards: bool = False
    """A CeresDB node that still holds its shards (or has none to hold), healthy or not."""


@dataclass(frozen=True)
class Controls:
    """The operator's say (SPEC section 8): pauses (a paused node is never started, stopped or
    restarted) and planned restarts asked for (each a stop by choice, within the budget)."""

    paused: frozenset[str] = frozenset()
    all_paused: bool = False
    restarts: Mapping[str, str] = field(default_factory=dict)
    """node -> why (the operation asking): restart it once the budget allows."""

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


def _join(*parts: str | None) -> str | None:
    text = "; ".join(p for p in parts if p)
    return text or None


# --- one node -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Want:
    """What an evaluated node asks for; granted (or held back) by the second step."""

    action: Action
    failure: str | None = None
    """The kind of failure counted when a stop by choice is granted (unhealthy, lease_lost...)."""
    state: NodeState = NodeState.STARTING
    rolling: bool = False
    """A recreate of a running container: one at a time, each after every other node is healthy."""


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
    budget: Budget
    controls: Controls
    lease_context: dict[str, leases.Context] = field(default_factory=dict)
    notes: list[Note] = field(default_factory=list)
    wakes: list[float] = field(default_factory=list)

    def fail(self, node: str, rec: NodeRecord, reason: str, kind: str) -> NodeRecord:
        """Count a failure: backoff delay, crashloop flag, an event note."""
        count, delay, began = backoff.count(
            rec.count, rec.healthy_since, self.now, self.policy, self.jitter()
        )
        self.notes.append(Note(node, kind, reason, f"failure {count.failures}; restart in {delay:.1f}s"))
        if began:
            window = self.policy.crashloop_window_s
            self.notes.append(
                Note(node, "crashloop", reason, f"{len(count.failure_times)} failures within {window:g}s")
            )
        return replace(
            rec,
            count=count,
            reason=reason,
            next_restart_at=self.now + delay,
            healthy_since=None,
            lease=replace(rec.lease, reopen_since=None, lost_since=None),
        )


def _evaluate(
    cycle: _Cycle, node: DesiredNode, rec: NodeRecord | None
) -> tuple[NodeView, NodeRecord, Want | None]:
    if not node.is_local:
        return NodeView(NodeState.REMOTE, f"runs on {node.host}"), rec or NodeRecord(), None
    observed, now = cycle.observed, cycle.now
    first_sight = rec is None
    rec = rec or NodeRecord()
    busy = observed.busy.get(node.name)
    c = observed.containers.get(node.name)
    paused = cycle.controls.is_paused(node.name)
    blocked = node.role == "ceresdb" and not cycle.meta_ready

    # 1. An exit not yet handled: a failure, unless the supervisor (or the operator) caused it.
    if c is not None and c.state in ("exited", "dead") and c.exit_identity != rec.accounted_exit:
        exit_info = ExitInfo(c.exit_code, c.oom_killed, c.finished_at)
        rec = replace(rec, accounted_exit=c.exit_identity, last_exit=exit_info, stop_counted_for=None)
        if rec.expected_exit == c.id or busy in STOPPING_KINDS:
            rec = replace(rec, expected_exit=None, healthy_since=None)
        elif paused:
            rec = replace(rec, reason=f"stopped while paused ({describe_exit(c)})", next_restart_at=None)
        elif c.id in observed.engine_restart_exits:
            rec = replace(rec, reason="docker engine restarted", next_restart_at=None, healthy_since=None)
            cycle.notes.append(
                Note(node.name, "engine_restarted", describe_exit(c), "docker engine restarted")
            )
        elif first_sight:
            rec = replace(rec, reason=f"found stopped ({describe_exit(c)})")
        else:
            rec = cycle.fail(node.name, rec, describe_exit(c), "died")
    failed = observed.failed_actions.get(node.name)
    if failed is not None:
        step, error = failed
        if step == "stop":  # still running: nothing was counted twice, and its next crash counts
            rec = replace(rec, expected_exit=None, reason=f"stop failed: {error}")
        elif step == "slot":  # the store refused a disruption slot: it waits, nothing counted
            rec = replace(rec, expected_exit=None, reason=error)
        else:
            rec = cycle.fail(node.name, rec, error, "action_failed")
    # 2. Healthy long enough: the failure count starts over.
    rec = replace(rec, count=backoff.reset_if_due(rec.count, rec.healthy_since, now, cycle.policy))
    if rec.healthy_since is not None and rec.failures:
        cycle.wakes.append(rec.healthy_since + cycle.policy.backoff_reset_s)

    if busy is not None:
        state = NodeState.STOPPING if busy in ("stop", "remove", "restart") else NodeState.STARTING
        return NodeView(state, rec.reason), rec, None
    if paused:
        return NodeView(NodeState.PAUSED, _paused_reason(c, cycle.controls)), rec, None

    waiting = rec.next_restart_at is not None and now < rec.next_restart_at
    wait_state = NodeState.CRASHLOOP if rec.crashloop else NodeState.BACKOFF

    # 3. No container: create it (CeresDB only once meta is ready).
    if c is None:
        if blocked:
            return NodeView(NodeState.BLOCKED, cycle.meta_detail), rec, None
        if waiting:
            return NodeView(wait_state, rec.reason, rec.next_restart_at), rec, None
        reason = "not created yet" if rec.run_key is None else "container missing"
        if rec.run_key is not None:
            rec = replace(rec, restarts=rec.restarts + 1)
        rec = replace(rec, next_restart_at=None)
        return NodeView(NodeState.STARTING, rec.reason), rec, Want(Action("create", node.name, None, reason))

    # 4. Spec changed: recreate (a stopped one at once; a running one rolling, one at a time).
    if c.spec_hash != node.spec_hash:
        reason = f"spec changed ({c.spec_hash or 'unlabelled'} -> {node.spec_hash})"
        if not c.is_running:
            if blocked:
                return NodeView(NodeState.BLOCKED, cycle.meta_detail), rec, None
            return (
                NodeView(NodeState.STARTING, reason),
                rec,
                Want(Action("recreate", node.name, c.id, reason)),
            )
        view, rec, _want = _watch_running(cycle, node, rec, c, blocked)
        want = Want(
            Action("recreate", node.name, c.id, reason, by_choice=True), None, NodeState.STOPPING, True
        )
        return replace(view, reason=_join(reason, view.reason)), rec, want

    # 5. Running (or paused by Docker): watch it; a planned restart asked for is a stop by choice.
    if c.is_running:
        view, rec, watching = _watch_running(cycle, node, rec, c, blocked)
        planned = cycle.controls.restarts.get(node.name)
        if planned is None or watching is not None:
            return view, rec, watching
        restart = Action("restart", node.name, c.id, planned, by_choice=True)
        return view, rec, Want(restart, None, NodeState.STOPPING)

    # 6. Stopped with the right spec: start it again, after the backoff delay.
    if blocked:
        return NodeView(NodeState.BLOCKED, _join(cycle.meta_detail, rec.reason or "stopped")), rec, None
    if waiting:
        return NodeView(wait_state, rec.reason, rec.next_restart_at), rec, None
    if not first_sight or rec.failures:
        rec = replace(rec, restarts=rec.restarts + 1)
    rec = replace(rec, next_restart_at=None)
    start = Action("start", node.name, c.id, rec.reason or "stopped")
    return NodeView(NodeState.STARTING, rec.reason), rec, Want(start)


def _paused_reason(c: ObservedContainer | None, controls: Controls) -> str:
    who = "the whole cluster is paused" if controls.all_paused else "paused by the operator"
    if c is None:
        return f"{who}; no container"
    if c.is_running:
        return f"{who}; container {c.state}"
    return f"{who}; container stopped ({describe_exit(c)})"


def _watch_running(
    cycle: _Cycle, node: DesiredNode, rec: NodeRecord, c: ObservedContainer, blocked: bool
) -> tuple[NodeView, NodeRecord, Want | None]:
    now, policy = cycle.now, cycle.policy
    if rec.run_key != c.run_key:  # a new run: forget the previous run's probes and clocks
        age = (cycle.observed.wall - c.started_at).total_seconds() if c.started_at else 0.0
        rec = replace(
            rec,
            run_key=c.run_key,
            run_seen_at=now - max(0.0, age),
            healthy_since=None,
            probe_failures=0,
            last_probe_at=0.0,
            next_restart_at=None,
            stop_counted_for=None,
            lease=replace(rec.lease, reopen_since=None, lost_since=None, progress=0),
        )
    probe = cycle.observed.probes.get(node.name)
    fresh = probe if probe is not None and probe.run_id == c.run_key else None
    if fresh is not None and fresh.at > rec.last_probe_at:
        rec = replace(rec, last_probe_at=fresh.at, probe_failures=0 if fresh.ok else rec.probe_failures + 1)
        if fresh.ok and rec.healthy_since is None:
            rec = replace(rec, healthy_since=now, reason=None)

    def stop(reason: str, state: NodeState, kind: str) -> Want:
        return Want(Action("stop", node.name, c.id, reason, by_choice=True), kind, state)

    if rec.healthy_since is None:  # still starting
        deadline = rec.run_seen_at + policy.start_timeout_s
        if blocked:
            return NodeView(NodeState.BLOCKED, cycle.meta_detail), rec, None
        # Past start_timeout it is judged like any running node: failure_threshold failed probes
        # in a row (a node started here has failed every probe since; one found running has not).
        if now >= deadline and rec.probe_failures >= policy.failure_threshold:
            answer = fresh.detail if fresh else "no probe answer"
            reason = f"not healthy within {policy.start_timeout_s:g}s: {answer}"
            return (
                NodeView(NodeState.UNHEALTHY, reason),
                rec,
                stop(reason, NodeState.UNHEALTHY, "start_timeout"),
            )
        if deadline > now:
            cycle.wakes.append(deadline)
        return NodeView(NodeState.STARTING, fresh.detail if fresh and not fresh.ok else None), rec, None

    judgement: leases.Judgement | None = None
    status: LeaseStatus | None = None
    if node.role == "ceresdb" and not blocked:
        judgement = leases.judge(
            cycle.observed.leases,
            node.endpoint,
            c.started_at,
            rec.run_seen_at,
            rec.lease,
            cycle.lease_context[node.name],
        )
        rec = replace(rec, lease=judgement.memory)
        held = {"held": True, "unassigned": None, "unknown": None}.get(judgement.state, False)
        status = LeaseStatus(held, judgement.shards, judgement.detail)
    keeps = judgement is not None and judgement.state in ("held", "unassigned")

    if rec.probe_failures >= policy.failure_threshold:
        detail = f"{rec.probe_failures} failed probes: {fresh.detail if fresh else '?'}"
        if blocked:
            return NodeView(NodeState.BLOCKED, _join(cycle.meta_detail, detail)), rec, None
        reason = f"unhealthy: {detail}"
        # It keeps serving only with shards of its own: one that meta assigns none serves nothing,
        # so it is down itself, as the other agents judge its published record (storeview).
        serving = status is not None and status.held is True
        view = NodeView(NodeState.UNHEALTHY, reason, lease=status, keeps_shards=serving)
        return view, rec, stop(reason, NodeState.UNHEALTHY, "unhealthy")
    probe_note = fresh.detail if fresh is not None and not fresh.ok else None

    if node.role == "meta":
        member = cycle.observed.meta.get(node.name)
        etcd_ok = member is not None and member.etcd_ok
        note = _join(probe_note, None if etcd_ok else "etcd not healthy")
        return NodeView(NodeState.HEALTHY, note, available=etcd_ok), rec, None
    if judgement is None:  # blocked: meta is not ready, nothing is judged
        rec = replace(rec, lease=replace(rec.lease, reopen_since=None, lost_since=None))
        return NodeView(NodeState.BLOCKED, cycle.meta_detail), rec, None
    if keeps:
        return (
            NodeView(NodeState.HEALTHY, probe_note, available=True, lease=status, keeps_shards=True),
            rec,
            None,
        )
    if judgement.state == "unknown":
        note = _join(probe_note, f"lease unknown: {judgement.detail}")
        return NodeView(NodeState.HEALTHY, note, lease=status), rec, None
    if judgement.state == "reopening":
        return NodeView(NodeState.REOPENING, judgement.detail, lease=status), rec, None
    if judgement.restart:
        reason = f"lease lost for {judgement.lost_for_s:.0f}s: {judgement.detail}"
        view = NodeView(NodeState.LEASE_LOST, reason, lease=status)
        return view, rec, stop(reason, NodeState.LEASE_LOST, "lease_lost")
    grace = f"restart after lease_grace ({policy.lease_grace_s:g}s)"
    return NodeView(NodeState.LEASE_LOST, _join(judgement.detail, grace), lease=status), rec, None


# --- the cluster --------------------------------------------------------------------------------


def _lease_contexts(cycle: _Cycle, records: dict[str, NodeRecord]) -> dict[str, leases.Context]:
    """For each local CeresDB node: what the rest of the cluster says about its shards' wait."""
    view = cycle.observed.leases
    pace = versions.Pace.of(cycle.desired.spec.release.version, cycle.desired.spec.ceresdb.lease)
    if view is None or view.error is not None:
        empty = leases.Context(pace, (), 0, (), cycle.policy.lease_grace_s)
        return {n.name: empty for n in cycle.desired.ceresdb}
    by_endpoint = {n.endpoint: n for n in cycle.desired.ceresdb}
    old: set[int] = set()
    for node in cycle.desired.ceresdb:
        c = cycle.observed.containers.get(node.name)
        rec = records.get(node.name)
        if node.is_local and c is not None and rec is not None:
            _current, earlier, _memory = leases.classify(view, node.endpoint, c.started_at, rec.lease)
            old |= set(earlier)
    pending = sum(
        1
        for endpoint, shards in view.assigned.items()
        for s in shards
        if s in old or s not in view.locks or view.locks[s].holder != endpoint
    )
    offline = {endpoint for endpoint in view.assigned if not _online(cycle, by_endpoint.get(endpoint))}
    contexts = {}
    for node in cycle.desired.ceresdb:
        others = tuple(
            sorted(by_endpoint[e].name if e in by_endpoint else e for e in offline - {node.endpoint})
        )
        contexts[node.name] = leases.Context(
            pace, others, pending, tuple(sorted(old)), cycle.policy.lease_grace_s
        )
    return contexts


def _online(cycle: _Cycle, node: DesiredNode | None) -> bool:
    """Whether CeresMeta would count the node as online (it heartbeats only while it runs)."""
    if node is None:
        return False  # an endpoint that is not in the file never comes back
    if not node.is_local:
        peer = cycle.budget.peers.get(node.name)
        return peer is None or peer[1] != "not running"  # an unpublished node may well be online
    c = cycle.observed.containers.get(node.name)
    return c is not None and c.state == "running"


def _down_reason(view: NodeView) -> str | None:
    """Why a node counts against the budget: a CeresDB node is down when it does not run or does
    not hold its shards (one that fails its probes but still holds them is not); a meta member
    whenever it is not healthy."""
    if view.available or (view.keeps_shards and view.state is NodeState.UNHEALTHY):
        return None
    if view.state is NodeState.HEALTHY:
        return "lease unknown" if view.lease is not None else "etcd not healthy"
    if view.state in (NodeState.BACKOFF, NodeState.CRASHLOOP, NodeState.STOPPED, NodeState.PAUSED):
        return "not running" if view.state is not NodeState.PAUSED else "paused"
    return str(view.state)


def plan(
    desired: DesiredCluster,
    observed: Observation,
    records: dict[str, NodeRecord],
    now: float,
    jitter: Callable[[], float],
    policy: Policy,
    budget: Budget | None = None,
    controls: Controls | None = None,
) -> Plan:
    """Pure: the actions for this cycle and each node's state. See the module docstring."""
    ready, detail = observed.meta_ready_detail
    cycle = _Cycle(
        desired, observed, policy, now, jitter, ready, detail, budget or Budget(), controls or Controls()
    )
    cycle.lease_context = _lease_contexts(cycle, records)
    evaluated = {n.name: _evaluate(cycle, n, records.get(n.name)) for n in desired.nodes}
    views = {name: view for name, (view, _rec, _want) in evaluated.items()}
    new_records = {name: rec for name, (_view, rec, _want) in evaluated.items()}
    down = {n.name: (n.role, _down_reason(views[n.name])) for n in desired.nodes if n.is_local}
    rolling = any(kind == "recreate" for kind in observed.busy.values())
    actions: list[Action] = []
    for node in desired.nodes:  # meta first: desired.nodes is in that order
        view, rec, want = evaluated[node.name]
        held_back: str | None = None
        if want is not None and want.rolling:
            held_back = _rolling_gate(cycle, node, rolling, down)
        if want is not None and want.action.by_choice and held_back is None:
            who = blockers(node.name, node.role, down, cycle.budget)
            held_back = describe(who) if who is not None else None
        if want is None:
            rec = replace(rec, budget_wait=None)
        elif held_back is not None:
            if held_back != rec.budget_wait and held_back.startswith("waiting for disruption budget"):
                cycle.notes.append(Note(node.name, "budget_wait", held_back, f"{want.action.kind} held back"))
            view, rec = (
                replace(view, reason=_join(view.reason, held_back)),
                replace(rec, budget_wait=held_back),
            )
        else:
            view, rec = _grant(cycle, node, view, rec, want)
            actions.append(want.action)
            rolling = rolling or want.rolling
            if want.action.by_choice:
                down[node.name] = (node.role, "stopping")
        views[node.name], new_records[node.name] = view, rec
        if rec.next_restart_at is not None and rec.next_restart_at > now:
            cycle.wakes.append(rec.next_restart_at)
    releasable = frozenset(n for n, (_role, why) in down.items() if why is None)
    return Plan(
        actions=tuple(actions),
        records=new_records,
        views=views,
        meta_ready=ready,
        meta_detail=detail,
        cluster_state=_cluster_state(views, ready, observed),
        next_wake_at=min(cycle.wakes, default=None),
        notes=tuple(cycle.notes),
        releasable=releasable,
    )


def _rolling_gate(
    cycle: _Cycle, node: DesiredNode, rolling: bool, down: Mapping[str, tuple[str, str | None]]
) -> str | None:
    """A running container is recreated only as the one change in flight, every other node
    healthy, and CeresDB only once every meta member runs its new spec."""
    if rolling:
        return "waiting its turn: another node is being recreated"
    if cycle.budget.files_differ is not None:
        return f"waiting until every agent runs the same file ({cycle.budget.files_differ})"
    if node.role == "ceresdb":
        stale = [
            m.name
            for m in cycle.desired.meta
            if m.is_local
            and (c := cycle.observed.containers.get(m.name)) is not None
            and c.spec_hash != m.spec_hash
        ]
        stale += [m.name for m in cycle.desired.meta if m.name in cycle.budget.outdated]
        if stale:
            return f"waiting its turn: meta first ({', '.join(sorted(stale))} not recreated yet)"
    unhealthy = sorted(name for name, (_role, why) in down.items() if name != node.name and why is not None)
    unhealthy += sorted(name for name, (_role, why) in cycle.budget.peers.items() if why is not None)
    if unhealthy:
        return f"waiting its turn: {', '.join(unhealthy)} not healthy"
    return None


def _grant(
    cycle: _Cycle, node: DesiredNode, view: NodeView, rec: NodeRecord, want: Want
) -> tuple[NodeView, NodeRecord]:
    action = want.action
    rec = replace(rec, budget_wait=None)
    if not action.by_choice:
        return view, rec
    if want.failure is not None and rec.stop_counted_for != rec.run_key:
        # The run goes on until the stop happens: a stop that must wait for its slot leaves the
        # node judged as it is (unhealthy, holding its shards), not as a fresh start that would
        # count against every other node's budget. healthy_since is cleared at the exit.
        counted = cycle.fail(node.name, rec, action.reason, want.failure)
        rec = replace(counted, stop_counted_for=rec.run_key, healthy_since=rec.healthy_since)
    return (
        NodeView(want.state, action.reason, rec.next_restart_at, lease=view.lease),
        replace(rec, expected_exit=action.container_id),
    )


def _cluster_state(views: dict[str, NodeView], meta_ready: bool, observed: Observation) -> ClusterState:
    local = [v for v in views.values() if v.state is not NodeState.REMOTE]
    if observed.engine_error is not None:
        return ClusterState.UNKNOWN
    if meta_ready and observed.leases is not None and observed.leases.error is not None:
        return ClusterState.UNKNOWN  # etcd cannot be observed: nobody knows who holds the shards
    if local and all(v.state is NodeState.STOPPED for v in local):
        return ClusterState.STOPPED
    if meta_ready and all(v.state is NodeState.HEALTHY and v.available for v in local):
        return ClusterState.HEALTHY
    if any(v.state in FAILING or v.state is NodeState.PAUSED for v in local):
        return ClusterState.DEGRADED
    return ClusterState.STARTING
