"""What this agent shares through the coordination store, and what it takes from it, in a task of
its own (`store-sync`): store calls never hold up the reconcile loop, which only hands over its
latest documents and the slots it may release, and reads the pauses from memory.

Each cycle the loop publishes its nodes' documents and identity (`share`, no I/O: the coordinator
writes them from its own task) and hands over the nodes whose disruption slot may be released
(`hand_over`). This task then releases those slots and keeps the operator's pauses in step (see
`operations.pauses` for the rules). It is the one owner of the pause book: every change to it,
an operator's included, happens under one lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Final

import structlog

from ceres_supervisor.adapters import etcd
from ceres_supervisor.cluster.coordinator import Coordinator
from ceres_supervisor.cluster.view import Identity
from ceres_supervisor.decisions.planning import NodeRecord, Plan
from ceres_supervisor.decisions.upgrades import Preflight
from ceres_supervisor.desired.containers import DesiredCluster
from ceres_supervisor.model.observed import Observation
from ceres_supervisor.operations import pauses
from ceres_supervisor.surfaces import reports

log = structlog.get_logger(__name__)

IDLE_S: Final = 1.0
"""How often the task looks again without being woken (a store that came back, a fresh view)."""


class StoreSync:
    def __init__(
        self,
        coordinator: Coordinator,
        identity: Identity,
        book: pauses.PauseBook,
        on_pauses_changed: Callable[[], None],
    ) -> None:
        self.coordinator = coordinator
        self.identity = identity
        self.pauses = book
        self.on_pauses_changed = on_pauses_changed
        self._releasable: frozenset[str] = frozenset()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._written_at = 0
        """The store's revision after this agent's last pause write: the view is mirrored into the
        file only once it has caught up with it (a view that has not yet brought back a pause just
        written here must not take it away)."""

    # -- from the loop (no I/O) -------------------------------------------------------------------

    def share(
        self,
        desired: DesiredCluster,
        result: Plan,
        observation: Observation,
        records: Mapping[str, NodeRecord],
        preflight: Preflight | None = None,
    ) -> None:
        """What the other agents see of this one: its nodes, its spec, what it still has to roll,
        the release each of its containers runs and its check of the file's images (an upgrade)."""
        self.identity.spec_hash = desired.spec_hash
        self.identity.nodes = tuple(n.name for n in desired.nodes if n.is_local)
        self.identity.outdated = reports.outdated(desired, observation.containers)
        self.identity.running = {
            n.name: c.release
            for n in desired.nodes
            if n.is_local and (c := observation.containers.get(n.name))
        }
        self.identity.preflight = preflight.document() if preflight is not None else None
        self.coordinator.publish(reports.local_documents(desired, result, observation, records))

    def share_unknown(self, desired: DesiredCluster, why: str) -> None:
        """A cycle that could not observe Docker: this agent's nodes are `unknown`, with why."""
        self.coordinator.publish(reports.unknown_documents(desired, self.coordinator.published, why))

    def hand_over(self, releasable: frozenset[str]) -> None:
        if releasable != self._releasable:
            self._releasable = releasable
            self._wake.set()

    # -- the operator (the API) --------------------------------------------------------------------

    async def pause(self, nodes: frozenset[str], pause: bool, everything: bool) -> str:
        """The operator's pause or resume: in the local file at once, in the store when it answers.
        Returns where it holds."""
        async with self._lock:
            change = await asyncio.to_thread(self.pauses.apply, nodes, pause, everything)
            try:
                self._written_at = max(self._written_at, await self._push(change))
            except etcd.EtcdError as err:
                log.warning("pause_queued", error=str(err))
                return "this machine now; the store when it answers again"
            await asyncio.to_thread(self.pauses.pushed, change.seq)
        return "every machine"

    async def _push(self, change: pauses.Change) -> int:
        """The change into the store; returns the store's revision after it."""
        if not self.coordinator.connected:
            raise etcd.EtcdUnavailable(self.coordinator.why_unavailable)
        resumed: frozenset[str] = frozenset()
        if change.everything and not change.pause:  # resume --all: every node's pause goes too
            resumed = change.nodes | self.coordinator.view.paused
        nodes = () if change.everything else sorted(change.nodes)
        return await self.coordinator.write_pauses(nodes, change.pause, change.everything, sorted(resumed))

    # -- the task ------------------------------------------------------------------------------------

    async def run(self) -> None:
        """For ever: release slots and keep the pauses in step whenever the store can take it."""
        while True:
            self._wake.clear()
            await self.step()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_S):
                    await self._wake.wait()

    async def step(self) -> None:
        """One pass, only from a fresh view (`available`): a frozen view must not undo a pause."""
        if not self.coordinator.available:
            return
        try:
            await self.coordinator.release(self._releasable)
            await self._sync_pauses()
        except etcd.EtcdError as err:
            log.info("store_sync_deferred", error=str(err))

    async def _sync_pauses(self) -> None:
        """Push what was asked meanwhile, write back what the store forgot, then mirror the store
        into the file: only from a fresh view (`available`), which the caller checked."""
        async with self._lock:
            book = self.pauses
            for change in list(book.pending):
                self._written_at = max(self._written_at, await self._push(change))
                await asyncio.to_thread(book.pushed, change.seq)
            view = self.coordinator.view
            if view.revision < self._written_at:
                return  # the watch has not brought back what was just written here: wait for it
            forgotten = book.unrecorded(view.pauses, view.all_paused)
            if forgotten is not None:
                log.info("pauses_written_back", nodes=sorted(forgotten.nodes), all=forgotten.everything)
                written = await self.coordinator.restore_pauses(sorted(forgotten.nodes), forgotten.everything)
                self._written_at = max(self._written_at, written)
                return  # mirrored once the watch brings the records back
            # To the file (in a thread) only when the records change it, not every second for
            # nothing; the lock held here is the only way to the book, so mirror sees what was compared.
            changes = book.pending or book.current.merged(view.pauses, view.all_paused) != book.current
            if changes and await asyncio.to_thread(book.mirror, view.pauses, view.all_paused):
                self.on_pauses_changed()
