"""The task that runs the probes: which are due, one in flight per target, the latest results.

The probes themselves (one HTTP or etcd exchange each) are `probes`; what to probe next is the
planner's (`decisions.targets`). Results older than the target they were made for are dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

import aiohttp
import structlog

from ceres_supervisor.decisions.nodes import LEADER_FRESH_S
from ceres_supervisor.decisions.targets import Target
from ceres_supervisor.desired.containers import DesiredNode
from ceres_supervisor.model.observed import LeaseView, MetaLeader, MetaMemberProbe, ProbeResult
from ceres_supervisor.observation.probes import probe_ceresdb, probe_member, read_leader, read_leases

log = structlog.get_logger(__name__)

FAST_INTERVAL_S: Final = 0.1
"""Probe interval for nodes that are starting and for the leader while meta is not ready."""
LEASE_FAST_INTERVAL_S: Final = 1.0
"""Lease reading interval while some node waits for its shards (one etcd range, one meta call)."""


@dataclass(frozen=True)
class ProbeSettings:
    interval_s: float
    timeout_s: float
    health_path: str
    cluster: str
    root: str
    leader_key: bytes
    shards_route: bool = False
    """CeresDB serves `GET /debug/shards` (from 1.2.5): probe which shards it serves."""
    health_paths: Mapping[str, str] = field(default_factory=dict)
    """Meta members whose container runs another release than the file's (an upgrade under way)
    -> the health route of that release (`/api/v1/healthCheck` up to 1.2.6, `/api/v1/health` from 1.2.7)."""

    def health_path_of(self, member: str) -> str:
        return self.health_paths.get(member, self.health_path)


class Prober:
    """Runs due probes concurrently (one in flight per target) and keeps the latest results.

    `on_change` is called when a result's outcome differs from the previous one, so the reconcile
    loop wakes at once instead of at its next tick. A result whose target was removed or changed
    (another run of the container, a member taken out of the file) while it was in flight is
    dropped.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: ProbeSettings,
        on_change: Callable[[], None],
        on_latency: Callable[[float], None] = lambda _s: None,
    ) -> None:
        self.on_latency = on_latency
        self.session = session
        self.settings = settings
        self.on_change = on_change
        self.nodes: dict[str, DesiredNode] = {}
        self.targets: dict[str, Target] = {}
        self.probes: dict[str, ProbeResult] = {}
        self.meta: dict[str, MetaMemberProbe] = {}
        self.leader: MetaLeader | None = None
        self.leases: LeaseView | None = None
        self._due: dict[str, float] = {}
        self._in_flight: set[str] = set()
        self._changed = asyncio.Event()

    def update(self, nodes: dict[str, DesiredNode], targets: list[Target], settings: ProbeSettings) -> None:
        """Called by the reconcile loop after each plan; a target that turned fast is due now."""
        self.nodes, self.settings = nodes, settings
        new = {t.key: t for t in targets}
        for key, target in new.items():
            old = self.targets.get(key)
            if old is None or (target.fast and not old.fast) or target.run_id != old.run_id:
                self._due[key] = 0.0
        for key in set(self.targets) - set(new):
            self._due.pop(key, None)
            self.probes.pop(key, None)
            self.meta.pop(key, None)
        self.targets = new
        self._changed.set()

    def _interval(self, target: Target) -> float:
        if not target.fast:
            return self.settings.interval_s
        return LEASE_FAST_INTERVAL_S if target.kind == "leases" else FAST_INTERVAL_S

    def _current(self, target: Target) -> bool:
        now = self.targets.get(target.key)
        return now is not None and (now.kind, now.run_id) == (target.kind, target.run_id)

    def members(self) -> list[DesiredNode]:
        """Meta members, the ones last seen healthy first (so a dead one costs no timeout)."""
        meta = [n for n in self.nodes.values() if n.role == "meta"]
        return sorted(meta, key=lambda m: not (self.meta.get(m.name) and self.meta[m.name].etcd_ok))

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            while True:
                now = time.monotonic()
                for key, target in list(self.targets.items()):
                    if key not in self._in_flight and self._due.get(key, 0.0) <= now:
                        self._in_flight.add(key)
                        self._due[key] = now + self._interval(target)
                        group.create_task(self._probe(target), name=f"probe-{key}")
                waits = [d for k, d in self._due.items() if k not in self._in_flight and k in self.targets]
                delay = max(0.0, min(waits, default=self.settings.interval_s) - time.monotonic())
                self._changed.clear()
                try:
                    async with asyncio.timeout(delay):
                        await self._changed.wait()
                except TimeoutError:
                    pass

    async def _probe(self, target: Target) -> None:
        try:
            changed = await self._run_probe(target)
            if changed:
                self.on_change()
        except Exception:  # a probe never takes the prober down
            log.exception("probe_failed", target=target.key)
        finally:
            self._in_flight.discard(target.key)
            self._changed.set()

    async def _run_probe(self, target: Target) -> bool:
        s = self.settings
        if target.kind == "leader":
            leader = await read_leader(self.session, self.members(), s.leader_key, s.cluster, s.timeout_s)
            last, self.leader = self.leader, leader
            if last is None or (target.fast and leader.at - last.at > LEADER_FRESH_S):
                return True  # a start waits for a fresh reading (the plan made the target fast)
            return (last.member, last.lists_cluster) != (leader.member, leader.lists_cluster)
        if target.kind == "leases":
            chief = self.nodes.get(self.leader.member) if self.leader and self.leader.member else None
            view = await read_leases(self.session, self.members(), chief, s.root, s.cluster, s.timeout_s)
            before, self.leases = self.leases, view
            return before is None or (before.locks, before.assigned, before.error) != (
                view.locks,
                view.assigned,
                view.error,
            )
        node = self.nodes.get(target.key)
        if node is None:
            return False
        if target.kind == "ceresdb":
            result = await probe_ceresdb(self.session, node, s.timeout_s, target.run_id, s.shards_route)
            if not self._current(target):
                return False
            self.on_latency(result.latency_s)
            previous = self.probes.get(target.key)
            self.probes[target.key] = result
            return previous is None or previous.ok != result.ok
        member = await probe_member(
            self.session, node, s.health_path_of(node.name), s.timeout_s, target.run_id
        )
        if not self._current(target):
            return False
        self.on_latency(member.alive.latency_s)
        old = self.meta.get(target.key)
        self.meta[target.key] = member
        self.probes[target.key] = member.alive
        return old is None or (old.alive.ok, old.etcd_ok) != (member.alive.ok, member.etcd_ok)
