"""Decide what to do: a pure function of desired state, observed state, memory and time.

`plan(...)` returns the actions to take, each node's state and reason, the records to remember
until the next cycle, and when to look again. No I/O, no clock, no randomness of its own (jitter
is passed in), so every decision is a table-driven unit test.

A pass has two steps. First every node is evaluated on its own (`nodes`): its state, and what it wants (a
start, a create, or a stop by choice with the reason). Then the wants are granted in order, meta
first: starts and creates always (a crash is never held back; a CeresDB start waits only for the
pass after one that stops a meta member), stops by choice only within the
disruption budget (`budget`, `gate`), and recreates of running containers one at a time, meta first,
each only when every other node is healthy. Failures are counted when they happen (an exit) or
when the stop is granted (a probe, lease or start-timeout failure), once per run of a container.
Restart delays follow `backoff`; the shard-lock judgement follows `leases`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from ceres_supervisor.decisions.backoff import Policy
from ceres_supervisor.decisions.budget import Budget, blockers, describe
from ceres_supervisor.decisions.gate import down_reason, grant, retire, rolling_gate
from ceres_supervisor.decisions.nodes import Cycle, evaluate, lease_contexts
from ceres_supervisor.decisions.plans import (
    FAILING,
    STOPPING_KINDS,
    Action,
    ClusterState,
    Controls,
    ExitInfo,
    LeaseStatus,
    NodeRecord,
    NodeState,
    NodeView,
    Note,
    Plan,
    UpgradeAsk,
    describe_exit,
    join,
)
from ceres_supervisor.desired.containers import DesiredCluster
from ceres_supervisor.model.observed import Observation

__all__ = [
    "FAILING",
    "STOPPING_KINDS",
    "Action",
    "Budget",
    "ClusterState",
    "Controls",
    "ExitInfo",
    "LeaseStatus",
    "NodeRecord",
    "NodeState",
    "NodeView",
    "Note",
    "Plan",
    "Policy",
    "UpgradeAsk",
    "describe_exit",
    "plan",
]


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
    ready, detail = meta_readiness(desired, observed)
    cycle = Cycle(
        desired, observed, policy, now, jitter, ready, detail, budget or Budget(), controls or Controls()
    )
    cycle.lease_context = lease_contexts(cycle, records)
    evaluated = {n.name: evaluate(cycle, n, records.get(n.name)) for n in desired.nodes}
    views = {name: view for name, (view, _rec, _want) in evaluated.items()}
    new_records = {name: rec for name, (_view, rec, _want) in evaluated.items()}
    down: dict[str, tuple[str, str | None]] = {
        n.name: (n.role, down_reason(views[n.name])) for n in desired.nodes if n.is_local
    }
    for c in observed.orphans:  # a removal in flight is a stop by choice until it is done
        if c.is_running and observed.busy.get(c.node) in STOPPING_KINDS:
            down[c.node] = (c.role, "stopping")
    rolling = any(kind == "recreate" for kind in observed.busy.values())
    actions: list[Action] = []
    going: list[str] = []
    """Meta members this pass stops: no CeresDB container is started in the same pass."""
    for node in desired.nodes:  # meta first: desired.nodes is in that order
        view, rec, want = evaluated[node.name]
        held_back: str | None = None
        if want is not None and want.rolling:
            held_back = rolling_gate(cycle, node, rolling, down, want.asked)
        if want is not None and want.action.by_choice and held_back is None:
            who = blockers(node.name, node.role, down, cycle.budget)
            held_back = describe(who) if who is not None else None
        if (
            want is not None
            and held_back is None
            and going
            and node.role == "ceresdb"
            and want.action.kind != "stop"
        ):
            held_back = being_stopped(going)
            if not want.action.by_choice:  # a start: blocked, as the next pass will say
                view = replace(view, state=NodeState.BLOCKED, reason=None)
        if want is None:
            rec = replace(rec, budget_wait=None)
        elif held_back is not None:
            if held_back != rec.budget_wait and held_back.startswith("waiting for disruption budget"):
                cycle.notes.append(Note(node.name, "budget_wait", held_back, f"{want.action.kind} held back"))
            view, rec = (
                replace(view, reason=join(view.reason, held_back)),
                replace(rec, budget_wait=held_back),
            )
        else:
            view, rec, action = grant(cycle, node, view, rec, want)
            actions.append(action)
            if node.role == "meta" and action.kind in STOPPING_KINDS:
                going.append(node.name)
            rolling = rolling or want.rolling
            if want.action.by_choice:
                down[node.name] = (node.role, "stopping")
        views[node.name], new_records[node.name] = view, rec
        if rec.next_restart_at is not None and rec.next_restart_at > now:
            cycle.wakes.append(rec.next_restart_at)
    removals, retiring = retire(cycle, observed.orphans, down)
    actions += removals
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
        retiring=retiring,
        awaiting_leader=cycle.awaiting_leader,
    )


def meta_readiness(desired: DesiredCluster, observed: Observation) -> tuple[bool, str]:
    """Meta as a CeresDB node started now would find it: ready by its members' probes and its
    leader (`Observation.meta_ready_detail`), and none of this machine's members being stopped.
    Until Docker has stopped a member it still answers (a paused one is thawed by its stop and
    answers for a moment); a CeresDB node started on it finds no meta a second later and exits.
    (Another machine's member being stopped is not known here: a disruption slot is held until
    its node is healthy again, well after the stop, so it cannot tell.)"""
    going = [m.name for m in desired.meta if observed.busy.get(m.name) in STOPPING_KINDS]
    if going:
        return False, being_stopped(going)
    return observed.meta_ready_detail


def being_stopped(members: list[str]) -> str:
    return f"meta members being stopped: {', '.join(members)}"


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
