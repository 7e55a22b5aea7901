"""The disruption budget (README explains it): may the supervisor stop this node by choice now? Pure.

A stop by choice is any stop of a running container that the supervisor decides (unhealthy,
lease lost, start timeout, a recreate, a planned restart); a crash is never one. A meta member is
stopped by choice only while every other member is healthy (etcd keeps its quorum); a CeresDB
node only while fewer than `max_unavailable` other CeresDB nodes are down or without their shards.
CeresDB nodes that are down themselves and all wait for a stop go one at a time, first by name
(as Kubernetes evicts pods that are already unhealthy: otherwise they block each other for ever),
and a node that only waits for meta to hand its shards back does not hold them back: up to 1.2.7
one offline assigned node stops every reopen in the cluster (reference section 2.5), so it may be
waiting for the very node it would hold back, and stopping a node that holds no shards takes
nothing more from the cluster.

`Budget` is the one interface behind the decision. On one machine it is built from this
supervisor's own view; with several machines `coordination` builds it from every agent's
published state and the slots held in the store, and the slot itself is then taken by an etcd
txn before the stop (so two machines cannot both spend the last unit).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

COORDINATION_UNAVAILABLE: Final = "coordination unavailable"
WAITING_FOR_STOP: Final = frozenset({"unhealthy", "lease_lost"})
"""Down reasons of nodes the supervisor wants to stop and holds back: already down themselves."""
WAITING_FOR_SHARDS: Final = frozenset({"reopening", "without its shards"})
"""Down reasons of nodes that run and answer and wait for meta to reopen their shards (a local
state, and what `storeview.down_reason` says of another machine's node)."""


@dataclass(frozen=True)
class Budget:
    """Everything the rule needs besides this supervisor's own nodes."""

    max_unavailable: int = 1
    coordinated: bool = False
    """Several machines: every stop by choice also needs a slot from the store."""
    available: bool = True
    """The store answers. When coordinated and not available, nothing is stopped by choice."""
    peers: Mapping[str, tuple[str, str | None]] = field(default_factory=dict)
    """Nodes of other machines: name -> (role, why it is down, or None when healthy with shards)."""
    slots: Mapping[str, str] = field(default_factory=dict)
    """Nodes holding a disruption slot cluster-wide -> the host that took it."""
    outdated: frozenset[str] = frozenset()
    """Other machines' nodes whose container still runs an old spec (a rolling change)."""
    files_differ: str | None = None
    """The agents' desired states differ (who has which): recreates wait until they agree."""
    images_missing: str | None = None
    """Which machine lacks which image of the file (the agents' preflight): recreates wait."""
    settled: frozenset[str] = frozenset()
    """Nodes of `slots` started again since their slot was taken: the stop it was taken for is over,
    and the node counts by its record alone (down again by itself, it waits its turn by name)."""


def blockers(
    node: str, role: str, down: Mapping[str, tuple[str, str | None]], budget: Budget
) -> list[str] | None:
    """Who stands in the way of stopping `node` by choice; None when it may be stopped.

    `down` is every node this supervisor judges (name -> (role, why it is down or None)); peers
    and slots of the budget are added to it."""
    if budget.coordinated and not budget.available:
        return [COORDINATION_UNAVAILABLE]
    every = {**budget.peers, **down}
    own = every.get(node, (role, None))[1]

    def blocks(name: str, why: str | None) -> bool:
        if name == node:
            return False
        if name in budget.slots and name not in budget.settled and why not in WAITING_FOR_SHARDS:
            return True  # being stopped by choice, whatever its record says yet (below: up to 1.2.7)
        if why is None:
            return False
        if role != "ceresdb" or own not in WAITING_FOR_STOP:
            return True
        # `node` is down itself (no shards): stopping it takes nothing more from the cluster. Those
        # that each wait to be stopped would wait for each other for ever: the first by name goes
        # first, the others still wait for it, so one at a time. A node waiting for its shards may
        # be waiting for `node` itself (an offline assigned node stops every reopen up to 1.2.7).
        # Another agent may have sent a later name first (it judged before `node` was published
        # down): its slot then blocks, above, so it is still one at a time.
        return not ((why in WAITING_FOR_STOP and name > node) or why in WAITING_FOR_SHARDS)

    others = sorted(
        f"{name} ({why or f'slot held by {budget.slots[name]}'})"
        for name, (other_role, why) in every.items()
        if other_role == role and blocks(name, why)
    )
    limit = 1 if role == "meta" else budget.max_unavailable
    return others if len(others) >= limit else None


def describe(who: list[str]) -> str:
    return "waiting for disruption budget: " + ", ".join(who)
