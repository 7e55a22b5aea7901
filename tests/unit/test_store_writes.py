"""What an agent writes to the store besides its own records (cluster/writes.py), against the
in-memory etcd: slots refused by the budget or an unreachable store, taken again by the agent that
holds them, given back only when releasable; claims rewritten and dropped only by their holder;
pause records, and their restoring that never overwrites a record another agent wrote."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest

from ceres_supervisor.adapters.etcd import EtcdUnavailable
from ceres_supervisor.cluster import writes
from ceres_supervisor.model.errors import SlotRefused

from .memstore import MemoryEtcd
from .test_coordinator import ROOT, Agent, doc, until


def slots(store: MemoryEtcd) -> dict[str, dict[str, Any]]:
    prefix = ROOT + b"disruptions/"
    return {
        k[len(prefix) :].decode(): json.loads(kv.value) for k, kv in store.kvs.items() if k.startswith(prefix)
    }


def record(store: MemoryEtcd, name: str) -> dict[str, Any] | None:
    kv = store.kvs.get(ROOT + name.encode())
    return json.loads(kv.value) if kv is not None else None


def alone(agent: Agent) -> None:
    """The budget of a cluster of this agent's nodes only (one may be down)."""
    agent.coordinator.budget(1, True, dict.fromkeys(agent.nodes, "ceresdb"), set(agent.nodes), "h")


@pytest.fixture
def store() -> MemoryEtcd:
    return MemoryEtcd()


async def test_a_slot_is_refused_naming_the_node_down_on_another_machine(store: MemoryEtcd) -> None:
    b = Agent(store, "b", ("db1",))
    await b.start()
    b.coordinator.publish({"db1": doc("db1", "unhealthy")})
    a = Agent(store, "a", ("db0",))
    await a.start()
    await until(lambda: a.coordinator.view.nodes.get("db1", {}).get("state") == "unhealthy", "db1 seen down")
    a.budget()
    with pytest.raises(SlotRefused, match="db1"):
        await a.coordinator.acquire("db0", "ceresdb", "planned restart")
    assert slots(store) == {}
    await a.stop()
    await b.stop()


async def test_a_slot_is_taken_once_and_asked_again_by_its_holder_it_is_still_granted(
    store: MemoryEtcd,
) -> None:
    a = Agent(store, "a", ("db0", "db1"))
    await a.start()
    a.budget()
    await a.coordinator.acquire("db0", "ceresdb", "planned restart")
    assert slots(store)["db0"]["host"] == "a" and slots(store)["db0"]["reason"] == "planned restart"
    revision = store.revision
    await a.coordinator.acquire("db0", "ceresdb", "planned restart")  # a retry of the same step
    assert store.revision == revision, "the holder's second ask writes nothing"
    await a.stop()


async def test_a_slot_is_refused_while_the_store_cannot_be_reached(store: MemoryEtcd) -> None:
    a = Agent(store, "a", ("db0",))
    await a.start()
    alone(a)
    store.frozen.update(store.endpoints)
    with pytest.raises(SlotRefused, match=r"coordination unavailable \(no member answers\)"):
        await a.coordinator.acquire("db0", "ceresdb", "x")
    store.frozen.clear()
    assert slots(store) == {}
    await a.stop()


async def test_a_cluster_that_changes_at_every_attempt_refuses_the_slot_after_the_last(
    store: MemoryEtcd,
) -> None:
    a = Agent(store, "a", ("db0",))
    await a.start()
    alone(a)
    writes_between = 0

    async def gate(client: str, what: str) -> None:
        nonlocal writes_between
        if client == "a" and what == "guarded":  # another agent's record changes after every read
            writes_between += 1
            store.revision += 1
            store._put(ROOT + b"agents/z", json.dumps({"n": writes_between}).encode(), 0)

    a.client.gate = gate
    with pytest.raises(SlotRefused, match="changed while the slot was being taken"):
        await a.coordinator.acquire("db0", "ceresdb", "x")
    assert writes_between == writes.SLOT_ATTEMPTS
    assert slots(store) == {}
    a.client.gate = None
    await a.stop()


def restarted(name: str, state: str, slot: dict[str, Any]) -> dict[str, Any]:
    """`name`'s record with a container started a second after `slot` was taken."""
    taken = datetime.fromisoformat(slot["since"])
    return {**doc(name, state), "started_at": (taken + timedelta(seconds=1)).isoformat()}


async def test_a_slot_whose_node_was_started_again_counts_by_its_record_and_a_new_stop_asks_again(
    store: MemoryEtcd,
) -> None:
    """db5's slot stays until db5 holds its shards; restarted and lease_lost again, db5 waits its
    turn by name like any other node down by itself: db1, down and first by name, is granted its
    slot (the cycle a chaos run ended in: each waited for the other for ever). db5's next stop asks
    the budget again (db1's stop is not over: refused) and writes its slot anew."""
    a = Agent(store, "a", ("db5",))
    b = Agent(store, "b", ("db1",))
    await a.start()
    await b.start()
    roles = {"db1": "ceresdb", "db5": "ceresdb"}
    a.coordinator.budget(1, True, roles, {"db5"}, "h")
    b.coordinator.budget(1, True, roles, {"db1"}, "h")
    await a.coordinator.acquire("db5", "ceresdb", "unhealthy")
    first = slots(store)["db5"]
    a.coordinator.publish({"db5": restarted("db5", "lease_lost", first)})
    b.coordinator.publish({"db1": doc("db1", "unhealthy")})
    await until(lambda: b.coordinator.view.nodes.get("db5", {}).get("state") == "lease_lost", "db5 seen")
    await until(lambda: a.coordinator.view.nodes.get("db1", {}).get("state") == "unhealthy", "db1 seen")
    await b.coordinator.acquire("db1", "ceresdb", "unhealthy")
    with pytest.raises(SlotRefused, match=r"db1 \(slot held by b\)|db1 \(unhealthy\)"):
        await a.coordinator.acquire("db5", "ceresdb", "lease lost")
    assert slots(store)["db5"] == first
    b.coordinator.publish({"db1": restarted("db1", "reopening", slots(store)["db1"])})
    await until(lambda: a.coordinator.view.nodes.get("db1", {}).get("state") == "reopening", "db1 restarted")
    await a.coordinator.acquire("db5", "ceresdb", "lease lost")
    assert slots(store)["db5"]["reason"] == "lease lost" and slots(store)["db5"]["since"] > first["since"]
    await a.stop()
    await b.stop()


async def test_only_slots_held_and_releasable_are_given_back(store: MemoryEtcd) -> None:
    a = Agent(store, "a", ("db0", "db1"))
    b = Agent(store, "b", ("db2",))
    await a.start()
    await b.start()
    a.coordinator.budget(2, True, {"db0": "ceresdb", "db1": "ceresdb", "db2": "ceresdb"}, {"db0", "db1"}, "h")
    b.coordinator.budget(2, True, {"db0": "ceresdb", "db1": "ceresdb", "db2": "ceresdb"}, {"db2"}, "h")
    await a.coordinator.acquire("db0", "ceresdb", "x")
    await b.coordinator.acquire("db2", "ceresdb", "x")
    await a.coordinator.release(frozenset({"db1", "db2"}))  # db0 not releasable; db2 not a's
    assert set(slots(store)) == {"db0", "db2"}
    await a.coordinator.release(frozenset({"db0"}))
    assert set(slots(store)) == {"db2"}
    await a.stop()
    await b.stop()


async def test_a_claim_is_rewritten_and_dropped_only_by_its_holder(store: MemoryEtcd) -> None:
    a = Agent(store, "a", ("db0",))
    b = Agent(store, "b", ("db1",))
    await a.start()
    await b.start()
    assert await a.coordinator.claim("operation", {"kind": "upgrade", "id": "op-1"}) is None
    assert await a.coordinator.update_claim("operation", {"kind": "upgrade", "id": "op-1", "halted": "db0"})
    assert record(store, "operation") is not None
    assert record(store, "operation")["halted"] == "db0"  # type: ignore[index]
    assert record(store, "operation")["host"] == "a"  # type: ignore[index]
    assert not await b.coordinator.update_claim("operation", {"kind": "upgrade", "id": "op-2"})
    await b.coordinator.unclaim("operation")
    assert record(store, "operation")["id"] == "op-1"  # type: ignore[index]
    await a.coordinator.unclaim("operation")
    assert record(store, "operation") is None
    await a.stop()
    await b.stop()


async def test_a_claim_cannot_be_taken_while_the_store_cannot_be_reached(store: MemoryEtcd) -> None:
    a = Agent(store, "a", ("db0",))
    await a.start()
    store.frozen.update(store.endpoints)
    with pytest.raises(EtcdUnavailable):
        await a.coordinator.claim("operation", {"kind": "upgrade"})
    store.frozen.clear()
    await a.stop()


async def test_pause_records_for_the_cluster_the_nodes_and_explicit_resumes(store: MemoryEtcd) -> None:
    a = Agent(store, "a", ("db0", "db1"))
    await a.start()
    await a.coordinator.write_pauses(["db0"], True, everything=False)
    assert record(store, "paused/db0") is not None
    assert record(store, "paused/db0")["paused"] is True  # type: ignore[index]
    assert record(store, "paused/db0")["by"] == "a"  # type: ignore[index]
    assert record(store, "paused") is None
    await a.coordinator.write_pauses([], False, everything=True, resumed=["db0", "db1"])
    assert record(store, "paused")["paused"] is False  # type: ignore[index]
    assert record(store, "paused/db0")["paused"] is False  # type: ignore[index]
    assert record(store, "paused/db1")["paused"] is False  # type: ignore[index]
    await a.stop()


async def test_restored_pauses_never_overwrite_a_record_that_exists(store: MemoryEtcd) -> None:
    """The store came back empty of db0's pause but holds a resume of db1 that another agent wrote:
    only db0's and the cluster's records are restored."""
    a = Agent(store, "a", ("db0", "db1"))
    await a.start()
    store.revision += 1
    store._put(ROOT + b"paused/db1", json.dumps({"paused": False, "by": "b"}).encode(), 0)
    await a.coordinator.restore_pauses(["db0", "db1"], everything=True)
    assert record(store, "paused/db0")["paused"] is True  # type: ignore[index]
    assert record(store, "paused")["paused"] is True  # type: ignore[index]
    assert record(store, "paused/db1") == {"paused": False, "by": "b"}
    await a.stop()


async def test_pauses_are_not_written_while_the_store_cannot_be_reached(store: MemoryEtcd) -> None:
    a = Agent(store, "a", ("db0",))
    await a.start()
    store.frozen.update(store.endpoints)
    await until(lambda: not a.coordinator.connected, "the session sees the store gone", 15)
    with pytest.raises(EtcdUnavailable):
        await a.coordinator.write_pauses(["db0"], True, everything=False)
    with pytest.raises(EtcdUnavailable):
        await a.coordinator.restore_pauses(["db0"], everything=False)
    store.frozen.clear()
    await a.stop()
