"""The coordinator against an in-memory etcd (tests/unit/memstore.py): slots that two agents race
for, a lease that expires between a read and a write, a watch that stalls, liveness tied to the
loop's progress, cluster-wide claims. Real asyncio, real time (TTLs of a second or two)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from ceres_supervisor.adapters.etcd import EtcdUnavailable, KeyValue
from ceres_supervisor.cluster import view as views
from ceres_supervisor.cluster.coordinator import LEASE_EXPIRED, Coordinator
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
    said: list[str] = []
    a.coordinator.on_change = lambda: said.append(a.coordinator.detail)
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
    stalled = f"the watch on {watched} did not bring back this agent's heartbeat within 1.3s"
    assert stalled in said, said
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
    said: list[str] = []
    a.coordinator.on_change = lambda: said.append(a.coordinator.detail)
    guard = threading.Timer(5.0, lambda: setattr(a.coordinator, "_closing", True))
    guard.start()
    try:
        a.coordinator.publish({"db0": doc("db0", "unknown")})  # a change that cannot be written now
        for _ in range(20):
            await asyncio.sleep(
                0.01
            )  # each a turn of the event loop that a spinning session never gives back
        assert not a.coordinator._closing, "the session blocked the event loop until the guard stopped it"
        # Nor is it tried under the lease that ran out (a write refused, the session started over).
        assert not published(store, "db0") and all(why == "ok" for why in said), said
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


async def test_a_change_of_the_releases_run_or_the_preflight_is_written_at_once(store: MemoryEtcd) -> None:
    """What an upgrade decides on (which release each node runs, whether this machine has the
    images) reaches the other agents when it changes, not with the next heartbeat: here no renewal
    gets through (each keepalive hangs), so no heartbeat rewrites the record, and it is rewritten
    all the same, with both."""
    a = Agent(store, "a", ("db0",))
    await a.start()
    key = ROOT + b"agents/a"
    never = asyncio.Event()

    async def hold_renewals(_client: str, what: str) -> None:
        if what == "keepalive":
            await never.wait()

    try:
        await until(lambda: key in store.kvs, "a's record written")
        a.client.gate = hold_renewals
        c = a.coordinator
        c.identity.running = {"db0": "ceresdb 1.2.5"}
        c.publish({"db0": doc("db0")})
        await until(
            lambda: json.loads(store.kvs[key].value)["running"] == {"db0": "ceresdb 1.2.5"}, "running"
        )
        c.identity.preflight = {"missing": ["ceresdb-server:1.2.5"]}
        c.publish({"db0": doc("db0")})
        await until(
            lambda: json.loads(store.kvs[key].value)["preflight"] == {"missing": ["ceresdb-server:1.2.5"]},
            "preflight",
        )
    finally:
        never.set()
        await a.stop()


async def test_a_lease_lost_under_the_agent_is_said_as_such_and_a_new_one_taken(store: MemoryEtcd) -> None:
    """The store dropped the agent's lease (it expired while the agent could not reach it, or an
    operator revoked it): the next renewal finds it gone, the agent says so in those words (not as
    some failed write), and starts over with a new lease and its records written again."""
    a = Agent(store, "a", ("db0",), ttl_s=1.0)
    await a.start()
    c = a.coordinator
    said: list[str] = []
    c.on_change = lambda: said.append(c.detail)
    old = c._lease
    held, go = asyncio.Event(), asyncio.Event()

    async def hold_one_renewal(_client: str, what: str) -> None:
        if what == "keepalive" and not go.is_set():
            held.set()
            await go.wait()

    try:
        a.client.gate = hold_one_renewal  # the lease goes while a renewal is on its way, not mid-write
        await until(held.is_set, "a renewal on its way")
        store.revoke(old)
        go.set()
        await until(lambda: said and said[-1] != "ok", "the loss said")
        assert said[-1] == LEASE_EXPIRED, said
        await until(lambda: c.available and c._lease != old and published(store, "db0"), "a new lease")
        assert store.kvs[ROOT + b"nodes/db0"].lease == c._lease
    finally:
        await a.stop()


async def test_only_the_records_that_changed_are_written_and_a_node_gone_is_deleted_once(
    store: MemoryEtcd,
) -> None:
    """Each write carries what changed since the last one: db1's new state, not db0's record
    again nor the agent's own (its file and nodes did not change); a node that leaves this agent
    is deleted once, not again with every later write."""
    a = Agent(store, "a", ("db0", "db1"))
    await a.start()
    c = a.coordinator
    sent: list[dict[str, Any]] = []
    txn = a.client.txn

    async def recording(compare: Any, success: Any, failure: Any = ()) -> Any:
        sent.extend(success)
        return await txn(compare, success, failure)

    a.client.txn = recording  # type: ignore[method-assign]

    def state(node: str) -> str:
        return str(json.loads(store.kvs[ROOT + f"nodes/{node}".encode()].value)["state"])

    try:
        await until(lambda: published(store, "db0") and published(store, "db1"), "both published")
        db0 = store.kvs[ROOT + b"nodes/db0"].mod_revision
        c.publish({"db0": doc("db0"), "db1": doc("db1", "unhealthy")})
        await until(lambda: state("db1") == "unhealthy", "db1's change written")
        assert store.kvs[ROOT + b"nodes/db0"].mod_revision == db0, "db0 did not change: not written again"
        c.publish({"db0": doc("db0")})
        await until(lambda: not published(store, "db1"), "db1 deleted")
        c.publish({"db0": doc("db0", "unhealthy")})
        await until(lambda: state("db0") == "unhealthy", "db0's change written")
        keys = [base64.b64decode(next(iter(r.values()))["key"]).decode() for r in sent]
        deletes = [k for r, k in zip(sent, keys, strict=True) if "request_delete_range" in r]
        assert deletes == [f"{ROOT.decode()}nodes/db1"], keys
        assert not [k for k in keys if "/agents/" in k], keys
        assert c.available
    finally:
        await a.stop()


async def test_each_heartbeat_the_watch_brings_back_confirms_the_view(store: MemoryEtcd) -> None:
    """The agent's own heartbeat, seen again through the watch, proves the view current as of when
    it was written: `confirmed_at` moves on at each, and the agent stays connected (a heartbeat
    not confirmed within 2/3 of the TTL would end the session as a stalled watch)."""
    a = Agent(store, "a", ("db0",), ttl_s=1.0)
    await a.start()
    c = a.coordinator
    said: list[str] = []
    c.on_change = lambda: said.append(c.detail)
    confirmed: list[float] = []

    def moved_on() -> bool:
        if not confirmed or c.confirmed_at > confirmed[-1]:
            confirmed.append(c.confirmed_at)
        return len(confirmed) >= 4

    try:
        await until(moved_on, "three heartbeats confirmed")
        assert c.available and all(why == "ok" for why in said), said
        # The loop stops making progress: the renewals stop, and so do the heartbeats. The last
        # one is confirmed by its own event, not only by a later one (there is none): no stalled
        # watch is declared before the lease runs out.
        a.hang()
        await until(lambda: not store.has(ROOT + b"agents/a"), "the lease run out")
        assert all(why == "ok" for why in said), said
    finally:
        await a.stop()


async def test_the_watch_starts_where_the_snapshot_ended(store: MemoryEtcd) -> None:
    """A change made between the agent's read of everything and the start of its watch (here b's
    node record, written while a's watch call is held) reaches a all the same, without a new
    session: the watch starts at the revision after the snapshot."""
    a = Agent(store, "a", ("db0",))
    b = Agent(store, "b", ("db1",))
    released = asyncio.Event()

    async def hold_the_watch(_client: str, what: str) -> None:
        if what == "watch":
            await released.wait()

    a.client.gate = hold_the_watch
    said: list[str] = []
    a.coordinator.on_change = lambda: said.append(a.coordinator.detail)
    try:
        a.task = asyncio.create_task(a.coordinator.run(a.client))
        a.cycle()
        await until(lambda: a.coordinator.available, "a connected, its watch held")
        await b.start()
        await until(lambda: published(store, "db1"), "b's node written")
        assert "db1" not in a.coordinator.view.nodes
        released.set()
        await until(lambda: "db1" in a.coordinator.view.nodes, "b's node seen by a")
        assert all(why == "ok" for why in said), said
    finally:
        released.set()
        await b.stop()
        await a.stop()


async def test_a_call_no_member_answers_is_tried_again_and_said_each_time(store: MemoryEtcd) -> None:
    """Two heartbeats that no member takes (a slow fsync, a member restarting), well within the
    lease: the agent stays available, says each retry with its error, counts them, and goes on
    renewing."""
    a = Agent(store, "a", ("db0",))
    await a.start()
    c = a.coordinator
    said: list[str] = []
    c.on_change = lambda: said.append(c.detail)
    refusals = 2

    async def refuse_two_puts(_client: str, what: str) -> None:
        nonlocal refusals
        if what == "put" and refusals:
            refusals -= 1
            raise EtcdUnavailable("no member answers")

    key = ROOT + b"agents/a"
    beat = json.loads(store.kvs[key].value)["heartbeat_at"]
    try:
        with capture_logs() as logs:
            a.client.gate = refuse_two_puts
            await until(
                lambda: not refusals and json.loads(store.kvs[key].value)["heartbeat_at"] != beat,
                "a heartbeat written after the two refused",
            )
        retried = [e for e in logs if e["event"] == "coordination_retry"]
        assert [(e["log_level"], e["error"]) for e in retried] == [("info", "no member answers")] * 2, retried
        assert c.retries == 2 and c.available and all(why == "ok" for why in said), said
    finally:
        await a.stop()


async def test_a_change_after_a_short_stall_is_written_in_the_same_session(store: MemoryEtcd) -> None:
    """The loop stalls long enough for the renewals to be withheld, not long enough for the lease to
    run out: once it makes progress again, the next renewal keeps the same lease, and the node
    records that changed meanwhile are written again as they change."""
    a = Agent(store, "a", ("db0",), ttl_s=3.0)
    await a.start()
    c = a.coordinator
    lease, key = c._lease, ROOT + b"agents/a"

    def beat() -> str:
        return str(json.loads(store.kvs[key].value)["heartbeat_at"])

    try:
        with capture_logs() as logs:
            a.hang()
            await until(lambda: any(e["event"] == "coordination_lease_withheld" for e in logs), "withheld")
        last = beat()
        a.cycle()
        await until(lambda: beat() != last, "renewed again")
        assert store.kvs[key].lease == lease, "the same lease"
        c.publish({"db0": doc("db0", "unhealthy")})
        await until(
            lambda: json.loads(store.kvs[ROOT + b"nodes/db0"].value)["state"] == "unhealthy",
            "the change written",
        )
    finally:
        await a.stop()
