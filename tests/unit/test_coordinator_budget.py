"""The disruption budget as the coordinator builds it from the store's view (`Coordinator.budget`):
which nodes count as the other machines', who holds which slot, which of their nodes run an old
spec, whether the agents' files agree, and whether the store may be relied on at all. Pure: a view
built with `apply`, no etcd, no session."""

from __future__ import annotations

import json
import time
from typing import Any

from ceres_supervisor.adapters.etcd import KeyValue
from ceres_supervisor.cluster import view as views
from ceres_supervisor.cluster.coordinator import Coordinator
from ceres_supervisor.cluster.view import AgentRecord, Identity, StoreView
from ceres_supervisor.decisions.budget import COORDINATION_UNAVAILABLE, Budget, blockers

ROOT = views.prefix("c")
ROLES = {"db0": "ceresdb", "db1": "ceresdb", "db2": "ceresdb"}


def kv(name: str, value: object) -> KeyValue:
    return KeyValue(ROOT + name.encode(), json.dumps(value).encode(), 1, 1, 7)


def agent(
    host: str, nodes: tuple[str, ...], spec_hash: str, outdated: tuple[str, ...] = ()
) -> dict[str, Any]:
    record = AgentRecord(host, 42, "t", f"{host}:1", spec_hash, "t0", "t1", nodes, outdated)
    parsed: dict[str, Any] = json.loads(record.encode())
    return parsed


def node(name: str, state: str = "healthy") -> dict[str, Any]:
    return {"name": name, "role": "ceresdb", "state": state, "reason": None, "lease": {"held": True}}


def coordinator(records: list[KeyValue], connected: bool = True) -> Coordinator:
    """Agent `a` (which runs db0) with a view of `records`, confirmed just now when `connected`."""
    c = Coordinator("c", Identity("a", "t", "a:1"), 5, lambda: None)
    c.view = views.apply(StoreView(), ROOT, [(False, r) for r in records], 3, reset=True)
    c.connected, c.confirmed_at = connected, time.monotonic()
    return c


def test_the_budget_holds_the_other_machines_nodes_their_slots_old_specs_and_differing_files() -> None:
    """Every field as the store shows it: the other machines' nodes and why they are down, the
    slots with the host that took each, the other machines' outdated nodes only (this agent's own
    come from its own observation), and who runs which file when they differ."""
    c = coordinator(
        [
            kv("agents/a", agent("a", ("db0",), "h1", outdated=("db0",))),
            kv("agents/b", agent("b", ("db1", "db2"), "h2", outdated=("db1",))),
            kv("nodes/db0", node("db0")),
            kv("nodes/db1", node("db1", "unhealthy")),
            kv("nodes/db2", node("db2")),
            kv("disruptions/db1", {"host": "b", "reason": "unhealthy", "since": "t"}),
        ]
    )
    budget = c.budget(2, True, ROLES, {"db0"}, "h1")
    assert budget == Budget(
        max_unavailable=2,
        coordinated=True,
        available=True,
        peers={"db1": ("ceresdb", "unhealthy"), "db2": ("ceresdb", None)},
        slots={"db1": "b"},
        outdated=frozenset({"db1"}),
        files_differ="a h1, b h2",
    )


def test_files_agree_when_every_other_agent_publishes_this_agents_hash() -> None:
    """This agent's own record may still carry the hash of its file before a reload (it is
    rewritten at the next write): the file it runs now is what counts, so the files agree."""
    c = coordinator(
        [
            kv("agents/a", agent("a", ("db0",), "before-reload")),
            kv("agents/b", agent("b", ("db1",), "h1")),
            kv("agents/x", agent("x", ("db2",), "h1")),
        ]
    )
    assert c.budget(1, True, ROLES, {"db0"}, "h1").files_differ is None


def test_a_budget_built_while_the_store_is_out_of_reach_blocks_every_stop_by_choice() -> None:
    """Coordinated, and the session down: the budget says so, and nothing may be stopped by
    choice (a crash is still restarted elsewhere in the planner)."""
    c = coordinator(
        [kv("agents/b", agent("b", ("db1",), "h1")), kv("nodes/db1", node("db1"))], connected=False
    )
    budget = c.budget(1, True, ROLES, {"db0"}, "h1")
    assert (budget.coordinated, budget.available) == (True, False)
    assert blockers("db0", "ceresdb", {"db0": ("ceresdb", "unhealthy")}, budget) == [COORDINATION_UNAVAILABLE]


def test_a_slot_is_settled_once_its_node_was_started_again_after_it_was_taken() -> None:
    """Both times are the node's agent's: a container started after the slot's `since` ends the stop
    it was taken for; one started before it, not running, a time that does not parse, or a node
    nobody publishes (its agent gone, or not yet written), does not."""
    since = "2026-12-07T10:00:00.000Z"

    def started(name: str, at: object) -> KeyValue:
        return kv(f"nodes/{name}", {**node(name, "lease_lost"), "started_at": at})

    c = coordinator(
        [
            started("db0", "2026-12-07T10:00:01.500Z"),
            started("db1", "2026-12-07T09:59:59.000Z"),
            started("db2", None),
            started("db3", "2026-12-07T10:00:01"),  # no offset: not a time this agent wrote
            started("db4", "later"),
            *(kv(f"disruptions/{n}", {"host": "b", "reason": "r", "since": since}) for n in ROLES),
            kv("disruptions/db3", {"host": "b", "reason": "r", "since": since}),
            kv("disruptions/db4", {"host": "b", "reason": "r", "since": since}),
            kv("disruptions/db5", {"host": "b", "reason": "r", "since": "never"}),
            started("db5", "2026-12-07T10:00:01.500Z"),
            kv("disruptions/db6", {"host": "b", "reason": "r", "since": since}),  # no record of db6
        ]
    )
    assert c.budget(1, True, ROLES, {"db0"}, "h1").settled == frozenset({"db0"})
