"""What this agent shares through the coordination store, and what it takes from it.

Each cycle it publishes its nodes' documents and identity (spec hash, its nodes, those still on an
old spec), releases the disruption slots of nodes that are healthy with their shards again, and
keeps the operator's pauses in step: a pause is written to the local file at once and to the store
when it answers (queued meanwhile), and the store's pauses are mirrored into the file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import structlog

from ceres_supervisor.adapters import etcd
from ceres_supervisor.cluster.coordinator import Coordinator, Identity
from ceres_supervisor.decisions.planning import NodeRecord, Plan
from ceres_supervisor.desired.containers import DesiredCluster
from ceres_supervisor.model.observed import Observation
from ceres_supervisor.operations import pauses
from ceres_supervisor.surfaces import reports

log = structlog.get_logger(__name__)


class StoreSync:
    def __init__(self, coordinator: Coordinator, identity: Identity, book: pauses.PauseBook) -> None:
        self.coordinator = coordinator
        self.identity = identity
        self.pauses = book

    async def pause(self, nodes: frozenset[str], pause: bool, everything: bool) -> str:
        """The operator's pause or resume: in the local file at once, in the store when it answers.
        Returns where it holds."""
        queued = False
        try:
            if not self.coordinator.available:
                raise etcd.EtcdUnavailable(self.coordinator.detail)
            await self.coordinator.set_paused(sorted(nodes), pause, everything)
        except etcd.EtcdError as err:
            queued = True
            log.warning("pause_queued", error=str(err))
        await asyncio.to_thread(self.pauses.apply, nodes, pause, everything, queued)
        return "this machine now; the store when it answers again" if queued else "every machine"

    def share(
        self,
        desired: DesiredCluster,
        result: Plan,
        observation: Observation,
        records: Mapping[str, NodeRecord],
    ) -> None:
        """What the other agents see of this one: its nodes, its spec, what it still has to roll."""
        self.identity.spec_hash = desired.spec_hash
        self.identity.nodes = tuple(n.name for n in desired.nodes if n.is_local)
        self.identity.outdated = reports.outdated(desired, observation.containers)
        self.coordinator.publish(reports.local_documents(desired, result, observation, records))

    async def sync(self, releasable: frozenset[str]) -> None:
        """Release the slots of nodes that are back, then keep the pauses in step."""
        await self.coordinator.release(releasable)
        await self._sync_pauses()

    async def _sync_pauses(self) -> None:
        """Mirror the store's pauses into the local file, after pushing what was asked meanwhile."""
        if not self.coordinator.available:
            return
        if self.pauses.pending:
            try:
                for nodes, pause, everything in self.pauses.pending:
                    await self.coordinator.set_paused(sorted(nodes), pause, everything)
            except etcd.EtcdError:
                return
            await asyncio.to_thread(self.pauses.pushed)
        view = self.coordinator.view
        store = pauses.Pauses(view.all_paused, view.paused)
        if store != self.pauses.current:
            await asyncio.to_thread(self.pauses.mirror, store)
