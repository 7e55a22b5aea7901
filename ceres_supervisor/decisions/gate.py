"""The second step of a planning pass: which wanted stops by choice may go now. Pure.

A node counts against the budget by `down_reason`; a recreate of a running container also waits
for `rolling_gate` (one change in flight, agents on one file, meta first, everyone else healthy);
`grant` turns a granted want into the node's new view and record (a failure counted once per run)
and the action to take (a stop of a CeresDB node that has not come up says so).
`retire` decides the removal of containers whose node is no longer in the file: through the same
budget and failsafe as any stop by choice, never while the node is paused, and never while the
agents' files differ (an agent with an older file would remove what a newer one added).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from ceres_supervisor.decisions.budget import blockers, describe
from ceres_supervisor.decisions.nodes import Cycle, Want
from ceres_supervisor.decisions.plans import Action, NodeRecord, NodeState, NodeView
from ceres_supervisor.desired.containers import DesiredNode
from ceres_supervisor.model.observed import ObservedContainer


def down_reason(view: NodeView) -> str | None:
    """Why a node counts against the budget: anything but healthy with its shards (a CeresDB node)
    or healthy with etcd (a meta member). A node that fails its probes is down even while it still
    holds its shard locks: nobody can tell that it serves them."""
    if view.available:
        return None
    if view.state is NodeState.HEALTHY:
        return "lease unknown" if view.lease is not None else "etcd not healthy"
    if view.state in (NodeState.BACKOFF, NodeState.CRASHLOOP, NodeState.STOPPED, NodeState.PAUSED):
        return "not running" if view.state is not NodeState.PAUSED else "paused"
    return str(view.state)


def rolling_gate(
    cycle: Cycle,
    node: DesiredNode,
    rolling: bool,
    down: Mapping[str, tuple[str, str | None]],
    asked: bool = False,
) -> str | None:
    """A running container is recreated only as the one change in flight, once every machine has
    the images of the file, every other node healthy, and CeresDB only once every meta member runs
    its new spec. An upgrade's step (`asked`) comes in the operation's order instead, which waits for
    each node to be healthy with its shards before the next (a node that is down goes first: waiting
    for it would wait for ever); the disruption budget still holds it."""
    if rolling:
        return "waiting its turn: another node is being recreated"
    if cycle.budget.files_differ is not None:
        return f"waiting until every agent runs the same file ({cycle.budget.files_differ})"
    if cycle.budget.images_missing is not None:
        return f"waiting until every machine has the images: {cycle.budget.images_missing}"
    if asked:
        return None
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


def grant(
    cycle: Cycle, node: DesiredNode, view: NodeView, rec: NodeRecord, want: Want
) -> tuple[NodeView, NodeRecord, Action]:
    action = want.action
    rec = replace(rec, budget_wait=None, restarts=rec.restarts + int(want.restart))
    if not action.by_choice:
        return view, rec, action
    if want.failure is not None and rec.stop_counted_for != rec.run_key:
        # The run goes on until the stop happens: a stop that must wait for its slot leaves the
        # node judged as it is (unhealthy, holding its shards), not as a fresh start that would
        # count against every other node's budget. healthy_since is cleared at the exit.
        counted = cycle.fail(node.name, rec, action.reason, want.failure)
        rec = replace(counted, stop_counted_for=rec.run_key, healthy_since=rec.healthy_since)
    if node.role == "ceresdb" and rec.healthy_since is None and action.container_id is not None:
        action = replace(action, while_starting=True)
    return (
        NodeView(want.state, action.reason, rec.next_restart_at, lease=view.lease),
        replace(rec, expected_exit=action.container_id),
        action,
    )


def retire(
    cycle: Cycle, orphans: tuple[ObservedContainer, ...], down: dict[str, tuple[str, str | None]]
) -> tuple[list[Action], dict[str, str]]:
    """Removals of this supervisor's containers whose node is not in the file (data kept): the
    actions granted now, and why each other one waits. A removal granted counts as down."""
    actions: list[Action] = []
    waiting: dict[str, str] = {}
    reason = "removed from the desired-state file"
    for c in orphans:
        if c.node in cycle.observed.busy:
            continue
        if cycle.controls.is_paused(c.node):
            waiting[c.node] = "paused by the operator: not removed while paused"
            continue
        if cycle.budget.files_differ is not None:
            waiting[c.node] = f"waiting until every agent runs the same file ({cycle.budget.files_differ})"
            continue
        if not c.is_running:
            actions.append(Action("remove", c.node, c.id, reason, role=c.role))
            continue
        who = blockers(c.node, c.role, {**down, c.node: (c.role, None)}, cycle.budget)
        if who is not None:
            waiting[c.node] = describe(who)
            continue
        actions.append(Action("remove", c.node, c.id, reason, by_choice=True, role=c.role))
        down[c.node] = (c.role, "stopping")
    return actions, waiting
