"""What to probe next, decided from the plan: fast while something starts or waits. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ceres_supervisor.decisions.planning import NodeState, Plan
from ceres_supervisor.desired.containers import DesiredCluster
from ceres_supervisor.model.observed import ObservedContainer


@dataclass(frozen=True)
class Target:
    """One thing to probe. `fast` while starting (or meta not ready): probed every 0.1 s."""

    kind: Literal["ceresdb", "meta", "leader", "leases"]
    key: str
    fast: bool = False
    run_id: str = ""


def probe_targets(
    desired: DesiredCluster, plan: Plan, containers: Mapping[str, ObservedContainer]
) -> list[Target]:
    """Meta members (every one of the file), this supervisor's running CeresDB nodes, the leader
    and the shard locks; fast while starting, while meta is not ready, while shards are awaited."""
    waiting = any(v.state in (NodeState.LEASE_LOST, NodeState.REOPENING) for v in plan.views.values())
    targets = [
        Target("leader", "leader", fast=not plan.meta_ready or plan.awaiting_leader),
        Target("leases", "leases", fast=waiting),
    ]
    for node in desired.nodes:
        c = containers.get(node.name)
        view = plan.views.get(node.name)
        starting = view is not None and view.state in (NodeState.STARTING, NodeState.BLOCKED)
        run = c.run_key if c is not None and c.is_running else ""
        if node.is_local and not run:
            continue
        if node.role == "meta":
            targets.append(Target("meta", node.name, fast=not plan.meta_ready or starting, run_id=run))
        elif node.is_local:
            targets.append(Target("ceresdb", node.name, fast=starting, run_id=run))
    return targets
