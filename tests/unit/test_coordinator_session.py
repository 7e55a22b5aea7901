"""The coordinator's session against the in-memory etcd (tests/unit/memstore.py): what it writes
when the loop hands documents over, what a new session keeps and what it refuses to start with,
where the watch goes after it broke, how failed sessions are retried, and a clean exit.

The pause between two sessions (RETRY_S, 1 s) is shortened to 0.1 s so that tests that go through
several sessions stay quick; every wait is on a condition."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import pytest

from ceres_supervisor.adapters.etcd import EtcdUnavailable
from ceres_supervisor.cluster import coordinator as coordinators
from ceres_supervisor.cluster.coordinator import Coordinator
from ceres_supervisor.model.errors import SlotRefused

from .memstore import MemoryClient, MemoryEtcd
from .test_coordinator import ROOT, Agent, doc, published, until
from .test_store_writes import record

RETRY_S = 0.1


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> MemoryEtcd:
    monkeypatch.setattr(coordinators, "RETRY_S", RETRY_S)
    return MemoryEtcd()


def failing(what: str, times: int) -> tuple[Callable[[str, str], Any], list[int]]:
    """A gate that fails the first `times` calls of kind `what` as an unreachable member would;
    and the count of such calls so far."""
    count = [0]

    async def gate(_client: str, call: str) -> None:
        if call == what:
            count[0] += 1
            if count[0] <= times:
                raise EtcdUnavailable(f"{what}: connection reset by peer")

    return gate, count


def details(c: Coordinator) -> list[tuple[bool, str, float]]:
    """(connected, detail, when) at each change the coordinator reports."""
    seen: list[tuple[bool, str, float]] = []
    c.on_change = lambda: seen.append((c.connected, c.detail, time.monotonic()))
    return seen


# -- what is written when the loop hands documents over ------------------------------------------------
# A TTL of 30 s: heartbeats every 10 s, so anything seen written within the 2 s of a wait was written
# because it changed, not at a heartbeat.


async def test_a_changed_node_record_is_written_at_once_and_an_unchanged_one_not_at_all(
    store: MemoryEtcd,
) -> None:
    a = Agent(store, "a", ("db0",), ttl_s=30.0)
    await a.start()
    await until(lambda: published(store, "db0"), "published")

    def state() -> object:
        return (record(store, "nodes/db0") or {}).get("state")

    a.coordinator.publish({"db0": doc("db0", "unhealthy")})
    await until(lambda: state() == "unhealthy", "db0's change written", 2.0)
    writes = a.client.calls.count("write")
    a.coordinator.publish({"db0": doc("db0", "unhealthy")})  # the same again: nothing to write
    a.coordinator.publish({"db0": doc("db0", "healthy")})
    await until(lambda: state() == "healthy", "db0's next change written", 2.0)
    assert a.client.calls.count("write") == writes + 1
    await a.stop()


async def test_a_node_no_longer_handed_over_has_its_record_deleted(store: MemoryEtcd) -> None:
    """db1 is no longer among the documents (the agent's own record unchanged): its record goes."""
    a = Agent(store, "a", ("db0", "db1"), ttl_s=30.0)
    await a.start()
    await until(lambda: published(store, "db0") and published(store, "db1"), "published")
    a.coordinator.publish({"db0": doc("db0")})
    await until(lambda: not published(store, "db1"), "db1's record deleted", 2.0)
    assert published(store, "db0")
    await a.stop()


async def test_a_change_of_the_agents_own_record_reaches_the_store_before_the_next_heartbeat(
    store: MemoryEtcd,
) -> None:
    """A node of a rolling change becomes outdated, its document unchanged: the other agents must
    learn it at once (their budgets count it), not at the heartbeat 10 s later."""
    a = Agent(store, "a", ("db0",), ttl_s=30.0)
    await a.start()
    await until(lambda: record(store, "agents/a") is not None and published(store, "db0"), "published")
    a.coordinator.identity.outdated = ("db0",)
    a.coordinator.publish({"db0": doc("db0")})
    await until(lambda: (record(store, "agents/a") or {}).get("outdated") == ["db0"], "outdated written", 2.0)
    await a.stop()


# -- a new session -------------------------------------------------------------------------------------


async def test_a_session_that_failed_is_tried_again_after_a_pause(store: MemoryEtcd) -> None:
    """No member answers: each session fails at once, and the next one waits RETRY_S (the store
    is not hammered in a tight loop)."""
    store.frozen.update(store.endpoints)
    a = Agent(store, "a", ("db0",), ttl_s=3.0)
    seen = details(a.coordinator)
    a.task = asyncio.create_task(a.coordinator.run(a.client))
    await until(lambda: len(seen) >= 3, "three sessions failed")
    assert all(s[:2] == (False, "no member answers") for s in seen)
    assert min(later[2] - earlier[2] for earlier, later in pairwise(seen)) >= RETRY_S * 0.9
    await a.stop()


async def test_a_session_that_starts_again_within_the_lease_keeps_it(store: MemoryEtcd) -> None:
    """The watch fails as the first session starts; the next one, 0.1 s later, finds the lease
    alive and keeps it (its records and slots stand) instead of taking a new one."""
    a = Agent(store, "a", ("db0",), ttl_s=3.0)
    a.client.gate, watches = failing("watch", 1)
    await a.start()
    await until(lambda: watches[0] == 2 and a.coordinator.available, "the second session connected")
    assert a.client.calls.count("grant") == 1
    kv = store.kvs[ROOT + b"agents/a"]
    assert list(store.leases) == [kv.lease]
    await a.stop()


async def test_no_session_starts_while_the_loop_makes_no_progress(store: MemoryEtcd) -> None:
    """The reconcile loop's last cycle was 10 s ago (TTL 3 s): no lease is granted and no record
    written, and the session says why; it connects once the loop completes cycles again."""
    a = Agent(store, "a", ("db0",), ttl_s=3.0)
    c = a.coordinator
    c._progress_at = time.monotonic() - 10  # the loop's last completed cycle
    seen = details(c)
    a.task = asyncio.create_task(c.run(a.client))
    await until(lambda: seen, "the first session's outcome")
    assert seen[0][:2] == (False, "lease not renewed: the reconcile loop completed no cycle for 10s")
    assert a.client.calls == []
    a.cycle()
    await until(lambda: c.available, "connected once the loop cycles")
    await a.stop()


async def test_a_bug_in_a_session_is_reported_and_the_next_session_connects(store: MemoryEtcd) -> None:
    """An exception that is not the store's (here raised by the store's client, as a bug would be)
    must not end the coordination: the agent says so and starts a new session."""
    a = Agent(store, "a", ("db0",), ttl_s=3.0)
    c = a.coordinator
    seen = details(c)
    bugs = [0]

    async def gate(_client: str, call: str) -> None:
        if call == "range" and not bugs[0]:
            bugs[0] += 1
            raise RuntimeError("a bug")

    a.client.gate = gate
    await a.start()
    assert (False, "internal error: RuntimeError('a bug')") in [s[:2] for s in seen]
    await a.stop()


async def test_the_watch_moves_to_the_next_member_each_time_it_breaks(store: MemoryEtcd) -> None:
    """The watch breaks on m0, then on m1, while calls keep being answered by m0: each new session
    watches the member after the one that broke (m1, then m2), not the one calls go to."""
    a = Agent(store, "a", ("db0",), ttl_s=3.0)
    a.client.gate, watches = failing("watch", 2)
    await a.start()
    await until(lambda: watches[0] == 3 and a.coordinator.available, "the third session connected")
    assert (a.coordinator.endpoint, a.coordinator.watching) == ("m0", "m2")
    await a.stop()


# -- a clean exit --------------------------------------------------------------------------------------


async def test_closing_ends_the_session_loop_and_revokes_nothing_when_no_lease_was_granted(
    store: MemoryEtcd,
) -> None:
    """The store never answered: close() has no lease to revoke (a call to an unreachable store
    would only delay the exit), and the session loop ends by itself, with no new attempt."""
    store.frozen.update(store.endpoints)
    a = Agent(store, "a", ("db0",), ttl_s=3.0)
    seen = details(a.coordinator)
    task = asyncio.create_task(a.coordinator.run(a.client))
    await until(lambda: seen, "a session failed")
    await a.coordinator.close()
    await until(task.done, "the session loop ended", 2.0)
    assert task.exception() is None
    assert "revoke" not in a.client.calls


async def test_closing_with_the_store_out_of_reach_returns_and_a_second_close_calls_nothing(
    store: MemoryEtcd,
) -> None:
    """The daemon exits while no member answers: close() must not raise (the lease then expires by
    itself), and once the lease is given up a second close() has nothing left to revoke."""
    a = Agent(store, "a", ("db0",), ttl_s=3.0)
    await a.start()
    store.frozen.update(store.endpoints)
    await a.coordinator.close()  # the revoke fails
    store.frozen.clear()
    await a.coordinator.close()
    assert a.client.calls.count("revoke") == 1
    await a.stop()


class LateKeepalive(MemoryClient):
    """A client whose keep-alive answers arrive late: the store renewed the lease, the answer is
    held until `answer` is set (a slow network, a loaded agent)."""

    def __init__(self, store: MemoryEtcd, name: str) -> None:
        super().__init__(store, name)
        self.holding = asyncio.Event()
        self.answer = asyncio.Event()
        self.hold = False

    async def keepalive(self, lease: int) -> int:
        ttl = await super().keepalive(lease)
        if self.hold:
            self.holding.set()
            await self.answer.wait()
        return ttl


async def test_no_record_is_written_without_a_lease_after_a_clean_exit(store: MemoryEtcd) -> None:
    """close() revokes the lease while a keep-alive answer is on its way: the heartbeat that follows
    must not be written under no lease (a key nothing would ever remove: the agent `up` for good)."""
    a = Agent(store, "a", ("db0",))
    late = LateKeepalive(store, "a")
    a.client = late
    await a.start()
    late.hold = True
    await until(late.holding.is_set, "a keep-alive on its way")
    await a.coordinator.close()
    retries, calls = a.coordinator.retries, len(late.calls)
    late.answer.set()
    # The answer handled: either the heartbeat is written (the fault) or the write is refused.
    await until(
        lambda: a.coordinator.retries > retries or "put" in late.calls[calls:],
        "the keep-alive's answer handled",
    )
    assert not published(store, "db0")
    assert ROOT + b"agents/a" not in store.kvs, store.kvs.get(ROOT + b"agents/a")
    await a.stop()


async def test_a_slot_asked_while_the_agent_exits_is_never_written_without_a_lease(store: MemoryEtcd) -> None:
    a = Agent(store, "a", ("db0",))
    await a.start()
    a.coordinator.budget(1, True, {"db0": "ceresdb"}, {"db0"}, "h")

    async def close_first(client: str, what: str) -> None:
        if client == "a" and what == "read":  # the slot's read: the agent exits meanwhile
            a.client.gate = None
            await a.coordinator.close()

    a.client.gate = close_first
    with pytest.raises(SlotRefused):
        await a.coordinator.acquire("db0", "ceresdb", "planned restart")
    assert not [k for k in store.kvs if k.startswith(ROOT + b"disruptions/")], store.kvs
    await a.stop()
