"""A cluster in a known state, for the tests of what the daemon shows and does: a real desired
cluster, an observation, the plan the real planner makes of it, in a real `Snapshot`; and a small
daemon that implements `surfaces.api.Daemon` and `operations.restarts.Host` over that snapshot (the
API and the operations run for real against it: no mock of either).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ceres_supervisor.cluster import view as views
from ceres_supervisor.cluster.coordinator import Coordinator
from ceres_supervisor.cluster.view import Identity
from ceres_supervisor.daemon.storesync import StoreSync
from ceres_supervisor.decisions import planning
from ceres_supervisor.decisions.planning import NodeRecord, Plan
from ceres_supervisor.desired import containers, loading
from ceres_supervisor.desired.containers import DesiredCluster
from ceres_supervisor.model.observed import LeaseView, Observation, ObservedContainer
from ceres_supervisor.model.spec import DesiredState
from ceres_supervisor.operations import restarts, upgrades
from ceres_supervisor.operations.pauses import PauseBook
from ceres_supervisor.surfaces.metrics import Metrics
from ceres_supervisor.surfaces.snapshot import Coordination, Event, ReloadResult, Snapshot

from .conftest import BASE
from .test_planning import META3, NOW, POLICY, WALL, container, observation, probe

__all__ = ["BASE", "META3", "NOW", "WALL", "FakeDaemon", "build", "healthy", "snapshot"]


def build(tmp_path: Path, text: str = BASE, local: Any = True) -> DesiredCluster:
    """The desired cluster of `text` with its state under `tmp_path`; `local`: every host is this
    machine's (True), none (False), or a predicate on the host."""
    path = tmp_path / "cluster.toml"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path.write_text(
        text.replace('state_dir = "/var/lib/ceres-supervisor"', f'state_dir = "{tmp_path}/state"')
    )
    spec = loading.load(path).spec
    is_local = local if callable(local) else (lambda _host: bool(local))
    return containers.build(spec, lambda _ref: "", is_local=is_local)


def healthy(desired: DesiredCluster, **changes: Any) -> tuple[Observation, Plan]:
    """Every local node running and answering; the plan of a daemon that has watched them for a while
    (planned twice, so every node has been seen healthy before)."""
    cs = [container(desired, n.name) for n in desired.nodes if n.is_local]
    obs = observation(desired, cs, probes={c.node: probe(c) for c in cs}, **changes)
    first = planning.plan(desired, obs, {}, NOW, lambda: 0.0, POLICY)
    records = {
        name: replace(r, healthy_since=NOW - 300) if r.run_key else r for name, r in first.records.items()
    }
    return obs, planning.plan(desired, obs, records, NOW, lambda: 0.0, POLICY)


def snapshot(
    desired: DesiredCluster,
    obs: Observation | None = None,
    plan: Plan | None = None,
    **changes: Any,
) -> Snapshot:
    fields: dict[str, Any] = {
        "cycle": 3,
        "loop_at": None,
        "desired": desired,
        "reload": ReloadResult(True, None, None),
        "probe_interval_s": desired.spec.supervisor.probe_interval,
        "agent": "127.0.0.1",
        "observation": obs,
        "plan": plan,
        "records": dict(plan.records) if plan else {},
    }
    return Snapshot(**{**fields, **changes})


class NoLogs:
    """The engine's `logs` call, for the log route: every container's log is `lines`."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    async def logs(
        self, container_id: str, lines: int, since_s: float | None = None
    ) -> list[tuple[str, str]]:
        return self.lines[-lines:]


class FakeDaemon:
    """What the API and the operations ask of the daemon, over one snapshot the test sets.

    `cycle()` stands for one reconcile cycle: the test changes `snapshot` and calls it; the
    operations waiting for a cycle then look again."""

    def __init__(self, snap: Snapshot, state_dir: Path, agent: str = "127.0.0.1") -> None:
        self.snapshot = snap
        self.agent = agent
        self.events: deque[Event] = deque(maxlen=1000)
        self.metrics = Metrics(lambda: self.snapshot)
        self.operations = restarts.Operations(self, lambda: self.session, None)
        self.session: Any = None
        state_dir.mkdir(parents=True, exist_ok=True)
        self.coordinator = Coordinator(
            snap.desired.spec.cluster.name, Identity(agent, "t", f"{agent}:1"), 3.0, lambda: None
        )
        self.store_sync = StoreSync(
            self.coordinator, self.coordinator.identity, PauseBook.open(str(state_dir)), lambda: None
        )
        self.reloads: list[asyncio.Future[ReloadResult]] = []
        self.reload_asked = asyncio.Event()
        self.reload_answer: ReloadResult | None = None
        """What a reload answers at once; None: the test answers each one itself (`reloads`)."""
        self.tasks: list[asyncio.Task[None]] = []
        self.remote: dict[str, tuple[str, str]] = {}
        """node -> (agent host, its API URL): another machine's nodes."""
        self.holder: str | None = None
        """Who holds the cluster-wide operation key (None: this agent may take it)."""
        self.claims: list[Mapping[str, Any]] = []
        self.released = 0
        self.planned: list[str] = []
        self._cycled = asyncio.Condition()
        self.generation = 0
        """Cycles ended so far."""
        self._waiting_at = -1
        """The generation at which an operation last started waiting for a cycle."""
        self.engine = NoLogs()
        self.upgrades = upgrades.Upgrades(self, self.operations, lambda: self.session, None)
        self.operation_docs: list[dict[str, Any]] = []

    # -- surfaces.api.Daemon --
    @property
    def spec(self) -> DesiredState:
        return self.snapshot.desired.spec

    def request_reload(self) -> asyncio.Future[ReloadResult]:
        waiter: asyncio.Future[ReloadResult] = asyncio.get_running_loop().create_future()
        self.reloads.append(waiter)
        self.reload_asked.set()
        if self.reload_answer is not None:
            waiter.set_result(self.reload_answer)
        return waiter

    @property
    def current_plan(self) -> Plan | None:
        return self.snapshot.plan

    @property
    def current_desired(self) -> DesiredCluster:
        return self.snapshot.desired

    def leader(self) -> str | None:
        obs = self.snapshot.observation
        return obs.leader.member if obs and obs.leader else None

    async def pause(self, nodes: frozenset[str], pause: bool, everything: bool) -> str:
        return await self.store_sync.pause(nodes, pause, everything)

    def spawn(self, coro: Awaitable[None], name: str) -> None:
        self.tasks.append(asyncio.ensure_future(coro))

    def record_event(self, node: str | None, type_: str, reason: str | None, message: str) -> None:
        self.events.append(Event(datetime.now(UTC), node, type_, reason, message))

    @property
    def pauses(self) -> PauseBook:
        return self.store_sync.pauses

    # -- operations.restarts.Host --
    def remote_agent(self, node: str) -> tuple[str, str] | None:
        return self.remote.get(node)

    async def cycled(self) -> None:
        async with self._cycled:
            self._waiting_at = self.generation
            await self._cycled.wait()

    async def settled(self) -> None:
        """Until every operation waits for the next cycle (or has ended): it has looked at the last
        snapshot and acted on it. A deadline, never a window."""
        async with asyncio.timeout(10):
            while True:
                if self._waiting_at == self.generation or all(t.done() for t in self.tasks):
                    return
                await asyncio.sleep(0)

    async def cycle(self, snap: Snapshot | None = None) -> None:
        """One cycle ends, with `snap` as its snapshot if given; returns once the operations have
        looked at it."""
        await self.settled()
        if snap is not None:
            self.snapshot = snap
        self.generation += 1
        async with self._cycled:
            self._cycled.notify_all()
        await self.settled()

    async def poke(self) -> None:
        """Something woke the operations without a cycle (an action's end): until they looked."""
        self.generation += 1
        await self.settled()

    async def claim_operation(self, doc: Mapping[str, Any]) -> str | None:
        self.claims.append(doc)
        return self.holder

    async def release_operation(self) -> None:
        self.released += 1

    def count_planned(self, node: str) -> None:
        self.planned.append(node)

    async def update_operation(self, doc: dict[str, Any]) -> None:
        self.operation_docs.append(doc)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def store_view(revision: int = 5, **changes: Any) -> views.StoreView:
    return replace(views.StoreView(revision), **changes)


def agent_record(
    host: str, nodes: tuple[str, ...], spec_hash: str = "h", **changes: Any
) -> views.AgentRecord:
    return views.AgentRecord(
        host=host,
        pid=1,
        version="t",
        listen=f"{host}:5480",
        spec_hash=spec_hash,
        started_at="2026-11-26T00:00:00.000Z",
        heartbeat_at="2026-11-26T00:00:01.000Z",
        nodes=nodes,
        **changes,
    )


def coordination(ok: bool = True, detail: str = "connected") -> Coordination:
    return Coordination(ok, detail, "http://127.0.0.1:2379" if ok else None, True, 5, None)


def lease_view(**changes: Any) -> LeaseView:
    return replace(LeaseView(NOW, WALL), **changes)


def records_of(plan: Plan) -> dict[str, NodeRecord]:
    return dict(plan.records)


def exited(desired: DesiredCluster, node: str, code: int = 137) -> ObservedContainer:
    return container(desired, node, "exited", exit_code=code)
