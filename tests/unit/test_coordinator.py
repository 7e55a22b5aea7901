"""The coordinator against an in-memory etcd (tests/unit/memstore.py): slots that two agents race
for, a lease that expires between a read and a write, a watch that stalls, liveness tied to the
loop's progress, cluster-wide claims. Real asyncio, real time (TTLs of a second or two)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from ceres_supervisor.adapters.etcd import KeyValue
from ceres_supervisor.cluster import view as views
from ceres_supervisor.cluster.coordinator import Coordinator
from ceres_supervisor.cluster.view import Identity, StoreView
from ceres_supervisor.model.errors import SlotRefused

from .memstore import MemoryClient, MemoryEtcd

CLUSTER = "c"
ROOT = views.prefix(CLUSTER)
ROLES = {"db0": "ceresdb", "db1": "ceresdb"}


def doc(name: str, state: str = "healthy") -> dict[str, Any]:
    return {
        "name": name,
        "role": "ceresdb",
        "state": state,
        "reason": None,
        "lease": {"held": True, "shards": [0]},
    }


async def until(predicate: Callable[[], object], what: str, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)
    raise AssertionError(what)


class Agent:
    def __init__(self, store: MemoryEtcd, host: str, nodes: tuple[str, ...], ttl_s: float = 2.0) -> None:
        self.client = MemoryClient(store, host)
        self.coordinator = Coordinator(CLUSTER, Identity(host, "t", f"{host}:1"), ttl_s, lambda: None)
        self.nodes = nodes
        self.task: asyncio.Task[None] | None = None
        self.cycling: asyncio.Task[None] | None = None

    async def start(self, cycling: bool = True) -> None:
        """The session, and (unless told otherwise) a reconcile loop that completes a cycle every
        0.1 s, which is what the lease is tied to."""
        self.task = asyncio.create_task(self.coordinator.run(self.client))
        if cycling:
            self.cycle()
        c = self.coordinator
        c.identity.nodes = self.nodes
        c.publish({n: doc(n) for n in self.nodes})
        await until(lambda: c.available, "connected")

    def cycle(self, engine_error: str | None = None) -> None:
        async def loop() -> None:
            while True:
                self.coordinator.progress(engine_error)
                await asyncio.sleep(0.1)

        self.hang()
        self.cycling = asyncio.create_task(loop())

    def hang(self) -> None:
        if self.cycling is not None:
            self.cycling.cancel()

    def budget(self) -> None:
        self.coordinator.budget(1, True, ROLES, set(self.nodes), "h")

    async def stop(self) -> None:
        self.hang()
        if self.task is not None:
            await self.coordinator.close()
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


@pytest.fixture
async def store() -> AsyncIterator[MemoryEtcd]:
    yield MemoryEtcd()


def published(store: MemoryEtcd, node: str) -> bool:
    return store.has(ROOT + f"nodes/{node}".encode())


class Schedule:
    """Lets the calls named in `order` through in that order (others pass freely); a client that
    is done (`drop`) no longer holds the others up."""

    def __init__(self, order: list[tuple[str, str]]) -> None:
        self.order = order
        self.done = asyncio.Condition()

    async def gate(self, client: str, what: str) -> None:
        if (client, what) not in self.order:
            return
        async with self.done:
            await self.done.wait_for(lambda: self.order[0] == (client, what))
            self.order.pop(0)
            self.done.notify_all()

    async def drop(self, client: str) -> None:
        async with self.done:
            self.order = [step for step in self.order if step[0] != client]
            self.done.notify_all()


ORDERS = sorted(set(itertools.permutations(["a1", "a2", "b1", "b2"])))


@pytest.mark.parametrize(
    "order", [o for o in ORDERS if o.index("a1") < o.index("a2") and o.index("b1") < o.index("b2")]
)
async def test_two_agents_racing_for_the_last_slot_never_both_get_it(
    store: MemoryEtcd, order: tuple[str, ...]
) -> None:
    """Every interleaving of two acquisitions (each a read, then a guarded write): with
    max_unavailable = 1, exactly one of db0 and db1 is granted."""
    a = Agent(store, "a", ("db0",))
    b = Agent(store, "b", ("db1",))
    await a.start()
    await b.start()
    await until(lambda: published(store, "db0") and published(store, "db1"), "both published")
    await until(lambda: "db1" in a.coordinator.view.nodes and "db0" in b.coordinator.view.nodes, "seen")
    a.budget()
    b.budget()
    schedule = Schedule([(s[0], "read" if s[1] == "1" else "guarded") for s in order])
    a.client.gate = b.client.gate = schedule.gate

    async def acquire(agent: Agent, node: str) -> None:
        try:
            await agent.coordinator.acquire(node, "ceresdb", "x")
        finally:
            await schedule.drop(agent.client.name)

    results = await asyncio.gather(acquire(a, "db0"), acquire(b, "db1"), return_exceptions=True)
    granted = [r for r in results if r is None]
    refused = [r for r in results if isinstance(r, SlotRefused)]
    assert (len(granted), len(refused)) == (1, 1), (order, results)
    assert len([k for k in store.kvs if k.startswith(ROOT + b"disruptions/")]) == 1
    await a.stop()
    await b.stop()


async def test_an_agent_whose_lease_expires_between_the_read_and_the_write_fails_the_slot(
    store: MemoryEtcd,
) -> None:
    """a reads (db2 of agent c healthy), c's lease expires (its records go: db2 now counts as
    down), then a's guarded write must fail; read again, db2 unpublished holds the budget."""
    c = Agent(store, "c", ("db2",))
    await c.start()
    expired = asyncio.Event()

    async def gate(client: str, what: str) -> None:
        if client == "a" and what == "guarded" and not expired.is_set():
            lease = next(kv.lease for k, kv in store.kvs.items() if k == ROOT + b"agents/c")
            store.revoke(lease)  # c's lease runs out right after a's read
            expired.set()

    a = Agent(store, "a", ("db0",))
    await a.start()
    await until(lambda: "db2" in a.coordinator.view.nodes, "db2 seen")
    a.coordinator.budget(1, True, {"db0": "ceresdb", "db2": "ceresdb"}, {"db0"}, "h")
    a.client.gate = gate
    with pytest.raises(SlotRefused, match="db2"):
        await a.coordinator.acquire("db0", "ceresdb", "x")
    assert expired.is_set()
    assert not any(k.startswith(ROOT + b"disruptions/") for k in store.kvs)
    await c.stop()
    await a.stop()


def change(deleted: bool, name: str, value: object = None) -> tuple[bool, KeyValue]:
    raw = b"" if value is None else json.dumps(value).encode()
    return deleted, KeyValue(ROOT + name.encode(), raw, 1, 1, 0)


@pytest.mark.parametrize(
    ("changes", "published", "paused"),
    [
        ([change(False, "nodes/db3", doc("db3")), change(True, "nodes/db3")], False, None),
        ([change(True, "nodes/db3"), change(False, "nodes/db3", doc("db3"))], True, None),
        (
            [change(False, "paused/db3", {"paused": True}), change(False, "paused/db3", {"paused": False})],
            False,
            False,
        ),
        (
            [change(False, "paused/db3", {"paused": False}), change(False, "paused/db3", {"paused": True})],
            False,
            True,
        ),
    ],
)
def test_a_watch_batch_is_applied_in_revision_order(
    changes: list[tuple[bool, KeyValue]], published: bool, paused: bool | None
) -> None:
    view = views.apply(StoreView(), ROOT, changes, 9)
    assert ("db3" in view.nodes) == published
    assert view.pauses.get("db3") == paused


async def test_a_stalled_watch_makes_the_view_unavailable_and_moves_to_another_member(
    store: MemoryEtcd,
) -> None:
    a = Agent(store, "a", ("db0",), ttl_s=2.0)
    b = Agent(store, "b", ("db1",), ttl_s=2.0)
    await a.start()
    await b.start()
    watched = a.coordinator._watch_endpoint or a.client.endpoint
    store.frozen.add(watched)  # partitioned: calls fail over, the watch on it goes quiet
    went_stale = asyncio.Event()

    async def watch_staleness() -> None:
        while True:
            if not a.coordinator.available:
                went_stale.set()
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch_staleness())
    await until(went_stale.is_set, "the view declared unavailable")
    await until(lambda: a.coordinator.available, "a fresh view again")
    assert a.coordinator._watch_endpoint != watched
    b.coordinator.publish({"db1": doc("db1", "unhealthy")})
    await until(
        lambda: a.coordinator.view.nodes.get("db1", {}).get("state") == "unhealthy", "b's change seen"
    )
    watcher.cancel()
    await a.stop()
    await b.stop()


async def test_the_lease_is_renewed_only_while_the_loop_makes_progress(store: MemoryEtcd) -> None:
    a = Agent(store, "a", ("db0",), ttl_s=1.0)
    await a.start()
    key = ROOT + b"agents/a"
    await until(lambda: published(store, "db0"), "published")
    a.hang()  # the loop completes no more cycles
    await until(
        lambda: not store.has(key) and not published(store, "db0"), "the records expired with the lease"
    )
    a.cycle()
    await until(
        lambda: store.has(key) and published(store, "db0") and a.coordinator.available, "back with the loop"
    )
    await a.stop()


async def test_each_renewal_writes_the_heartbeat_into_the_agents_record(store: MemoryEtcd) -> None:
    """The record other agents judge this one by, `agents/<host>`, carries a newer `heartbeat_at` at
    each renewal (every TTL/3), under the agent's lease."""
    a = Agent(store, "a", ("db0",), ttl_s=1.0)
    await a.start()
    key = ROOT + b"agents/a"
    beats: list[str] = []

    def beat() -> bool:
        kv = store.kvs.get(key)
        at = json.loads(kv.value)["heartbeat_at"] if kv is not None else None
        if at is not None and (not beats or beats[-1] != at):
            beats.append(at)
        return len(beats) >= 3

    await until(beat, "three heartbeats")
    assert beats == sorted(beats) and store.kvs[key].lease == a.coordinator._lease
    await a.stop()


async def test_heartbeats_coming_back_through_the_watch_do_not_wake_the_loop(store: MemoryEtcd) -> None:
    """Every agent rewrites its record at each renewal (agent_ttl/3); the loop is woken by what it
    decides on (another agent's node, a slot, a pause, an agent gone), not by heartbeats: waking
    every agent's loop for each of them was most of an idle agent's work."""
    a = Agent(store, "a", ("db0",), ttl_s=1.0)
    b = Agent(store, "b", ("db1",), ttl_s=1.0)
    await a.start()
    await b.start()
    await until(lambda: "db1" in a.coordinator.view.nodes, "b's node seen by a")
    woken: list[int] = []
    a.coordinator.on_change = lambda: woken.append(a.coordinator.view.revision)
    beats = {h: rec.heartbeat_at for h, rec in a.coordinator.view.agents.items()}
    await until(
        lambda: all(a.coordinator.view.agents[h].heartbeat_at > beats[h] for h in ("a", "b")),
        "a heartbeat of each agent seen",
    )
    assert woken == [], "woken by heartbeats alone"
    b.coordinator.publish({"db1": doc("db1", "unhealthy")})
    await until(lambda: woken, "woken by b's node going down")
    await b.stop()
    await a.stop()


async def test_a_withheld_renewal_is_said_once_and_so_is_the_renewal_again(store: MemoryEtcd) -> None:
    """The operator's trace of liveness: one warning with the reason when the agent stops renewing
    (not one per heartbeat), one line when it renews again."""
    a = Agent(store, "a", ("db0",), ttl_s=1.0)
    await a.start()
    with capture_logs() as logs:
        a.hang()
        await until(lambda: not store.has(ROOT + b"agents/a"), "renewals withheld")
        await until(lambda: a.coordinator._withheld is not None, "withheld")
        withheld = [e for e in logs if e["event"] == "coordination_lease_withheld"]
        a.cycle()
        await until(lambda: store.has(ROOT + b"agents/a"), "renewed again")
    assert len(withheld) == 1 and "cycle" in withheld[0]["reason"], withheld
    assert withheld[0]["log_level"] == "warning"
    again = [e for e in logs if e["event"] == "coordination_lease_renewed_again"]
    assert len(again) == 1 and again[0]["log_level"] == "info"
    await a.stop()


async def test_a_docker_engine_lost_for_long_stops_the_renewals(store: MemoryEtcd) -> None:
    a = Agent(store, "a", ("db0",), ttl_s=1.0)
    await a.start()
    key = ROOT + b"agents/a"
    a.cycle(engine_error="docker engine not answering")
    await until(lambda: not store.has(key), "renewals withheld after 3 TTLs", timeout_s=15)
    a.cycle()
    await until(lambda: store.has(key), "renewed again once Docker answers")
    await a.stop()


async def test_withheld_renewals_never_block_the_event_loop(store: MemoryEtcd) -> None:
    """Renewals withheld (Docker lost) and a node record changed: the record waits for a renewal,
    and the session must keep yielding. It once spun on its `dirty` event, set and never cleared,
    which starved the whole event loop (the API, the observation) and grew the timer heap without
    bound. A guard thread ends the session after 5 s, so a spin fails the test instead of hanging it."""
    a = Agent(store, "a", ("db0",), ttl_s=1.0)
    await a.start()
    a.cycle(engine_error="docker engine not answering")
    await until(lambda: not store.has(ROOT + b"agents/a"), "renewals withheld after 3 TTLs", timeout_s=15)
    guard = threading.Timer(5.0, lambda: setattr(a.coordinator, "_closing", True))
    guard.start()
    try:
        a.coordinator.publish({"db0": doc("db0", "unknown")})  # a change that cannot be written now
        for _ in range(20):
            await asyncio.sleep(
                0.01
            )  # each a turn of the event loop that a spinning session never gives back
        assert not a.coordinator._closing, "the session blocked the event loop until the guard stopped it"
    finally:
        guard.cancel()
    a.cycle()
    await until(lambda: store.has(ROOT + b"agents/a") and published(store, "db0"), "written once renewed")
    await a.stop()


async def test_a_claim_is_held_by_one_agent_and_goes_with_its_lease(store: MemoryEtcd) -> None:
    a = Agent(store, "a", ("db0",))
    b = Agent(store, "b", ("db1",))
    await a.start()
    await b.start()
    assert await a.coordinator.claim("operation", {"kind": "rolling-restart", "id": "op-1"}) is None
    assert await a.coordinator.claim("operation", {"kind": "rolling-restart", "id": "op-1"}) is None
    assert await b.coordinator.claim("operation", {"kind": "rolling-restart", "id": "op-2"}) == "a"
    await a.stop()  # its lease revoked: the claim goes with it
    assert await b.coordinator.claim("operation", {"kind": "rolling-restart", "id": "op-2"}) is None
    await b.coordinator.unclaim("operation")
    assert ROOT + b"operation" not in store.kvs
    await b.stop()


async def test_an_agent_with_an_older_file_sees_who_runs_a_newer_one(store: MemoryEtcd) -> None:
    """`cluster.generation` as the agents publish it: the one whose file is older learns which host
    runs a newer one (and removes nothing until the files agree); the newer one sees nothing newer."""
    old, new = Agent(store, "127.0.0.1", ("db0",)), Agent(store, "127.0.0.2", ("db1",))
    old.coordinator.identity.generation, new.coordinator.identity.generation = 3, 4
    await old.start()
    await new.start()
    try:
        await until(lambda: len(old.coordinator.view.agents) == 2, "both agents in the old one's view")
        await until(lambda: len(new.coordinator.view.agents) == 2, "both agents in the new one's view")
        assert old.coordinator.newer_file() == "127.0.0.2 runs generation 4, this file is generation 3"
        assert new.coordinator.newer_file() is None
    finally:
        await old.stop()
        await new.stop()
