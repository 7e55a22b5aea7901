"""The reconcile loop: observe -> plan -> execute -> report, once per wake-up.

Docker events, probe results, the store's watch, SIGHUP and the API only wake it; each cycle
re-observes everything (`observation.observer`), plans purely (`decisions.planning`), hands the
actions to the executor (`actions.executor`) and ends by publishing one immutable `Snapshot`, the
only thing the API reads. A cycle survives any exception.

Progress is what the agent's lease is tied to: a completed cycle tells the coordinator so, and a
cycle that cannot observe Docker publishes this agent's nodes as `unknown` with the reason (the
other agents count them as down). Nothing here awaits the store: the documents and the slots to
release are handed to the store synchronisation task.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import structlog

from ceres_supervisor.actions import executor, images
from ceres_supervisor.adapters import systemd
from ceres_supervisor.cluster.coordinator import Coordinator
from ceres_supervisor.daemon.storesync import StoreSync
from ceres_supervisor.decisions import planning
from ceres_supervisor.decisions import upgrades as decide_upgrades
from ceres_supervisor.decisions.planning import NodeRecord, Plan
from ceres_supervisor.decisions.targets import probe_targets
from ceres_supervisor.desired import loading, locality, topology
from ceres_supervisor.desired.containers import DesiredCluster
from ceres_supervisor.model.backups import BackupStatus
from ceres_supervisor.model.observed import Observation
from ceres_supervisor.model.spec import DesiredState
from ceres_supervisor.observation import prober
from ceres_supervisor.observation.observer import Inflight, Observer
from ceres_supervisor.operations import restarts, upgrades
from ceres_supervisor.surfaces import metrics, reports
from ceres_supervisor.surfaces.snapshot import Coordination, ReloadResult, Snapshot

log = structlog.get_logger(__name__)

ENGINE_RETRY_S: Final = 1.0


@dataclass
class Setting:
    """What a reload replaces, all at once."""

    loaded: loading.Loaded
    desired: DesiredCluster
    locality: locality.Locality
    policy: planning.Policy

    @property
    def spec(self) -> DesiredState:
        return self.loaded.spec

    @property
    def coordinated(self) -> bool:
        """Several machines share this cluster: stops by choice need the store."""
        return any(not n.is_local for n in self.desired.nodes)


@dataclass(frozen=True)
class Parts:
    """The collaborators of the loop, built and owned by the daemon."""

    observer: Observer
    executor: executor.Executor
    coordinator: Coordinator
    store_sync: StoreSync
    operations: restarts.Operations
    metrics: metrics.Metrics
    notifier: systemd.Notifier
    record_event: Callable[[str | None, str, str | None, str], None]
    backup_status: Callable[[], BackupStatus]
    images: images.ImageCheck
    upgrades: upgrades.Upgrades
    published: Callable[[Snapshot], object] = lambda _snapshot: None


class Loop:
    def __init__(self, parts: Parts, setting: Setting, agent: str) -> None:
        self.parts = parts
        self.setting = setting
        self.agent = agent
        self.records: dict[str, NodeRecord] = {}
        self.reload_result = ReloadResult(True, None, None)
        self.snapshot = Snapshot(
            0, None, setting.desired, self.reload_result, setting.spec.supervisor.probe_interval, agent
        )
        self.last_plan: Plan | None = None
        self.prober: prober.Prober | None = None
        self.ready = asyncio.Event()
        """Set after the first completed cycle (READY=1)."""
        self.wake_event = asyncio.Event()
        self.cycled = asyncio.Condition()
        self.failed: dict[str, tuple[str, str]] = {}
        """Actions that failed since the last cycle: node -> (step, error)."""
        self._cycle = 0
        self._random = random.Random()
        self._topology_recorded = False
        self._last_budget: planning.Budget | None = None

    @property
    def cycles(self) -> int:
        """Cycles begun since the daemon started."""
        return self._cycle

    @property
    def engine_error(self) -> str | None:
        return self.parts.observer.engine_error

    def wake(self) -> None:
        self.wake_event.set()

    def controls(self) -> planning.Controls:
        current = self.parts.store_sync.pauses.current
        asks, note = self.parts.upgrades.controls()
        return planning.Controls(
            current.nodes, current.all, self.parts.operations.restart_reasons(), asks, note
        )

    def probe_settings(self) -> prober.ProbeSettings:
        """Meta probed as it runs: in an upgrade, the members' release until their step is done."""
        s = self.setting.spec
        last = self.parts.upgrades.last
        paths, leader_key = decide_upgrades.probed_as(
            s.release, last.running if last else {}, [m.name for m in self.setting.desired.meta]
        )
        return prober.ProbeSettings(
            s.supervisor.probe_interval,
            s.supervisor.probe_timeout,
            s.release.meta_health_path,
            s.cluster.name,
            s.release.root_path,
            leader_key.encode(),
            shards_route=s.release.has_debug_shards,
            health_paths=paths,
        )

    # -- one cycle ----------------------------------------------------------------------------------

    async def cycle(self, group: asyncio.TaskGroup) -> Plan | None:
        """One observe -> plan -> execute -> report. None when Docker could not be observed."""
        p, s = self.parts, self.setting
        started = time.monotonic()
        self._cycle += 1
        failed, self.failed = self.failed, {}
        # copied before listing: a finishing action never looks idle
        inflight = Inflight(dict(p.executor.busy), failed)
        observation = await p.observer.observe(s.desired, self.prober, inflight)
        if observation.engine_error is not None:
            self.failed = {**failed, **self.failed}  # not planned: keep them for later
            p.coordinator.progress(observation.engine_error)
            if s.coordinated:
                p.store_sync.share_unknown(
                    s.desired, f"docker engine on {self.agent} cannot be observed: {observation.engine_error}"
                )
            self._publish(observation, None)
            return None
        p.coordinator.progress(None)
        local = [n.container.image for n in s.desired.nodes if n.is_local]
        p.images.want(s.desired.spec_hash, local, s.spec.supervisor.pull == "missing")
        if observation.engine_restart_exits:
            p.record_event(None, "engine_restarted", None, "docker engine restarted")
        result = planning.plan(
            s.desired,
            observation,
            self.records,
            observation.at,
            lambda: self._random.uniform(-0.2, 0.2),
            s.policy,
            self._budget(),
            self.controls(),
        )
        self.records = result.records
        for note in result.notes:
            self._note(note)
        p.executor.slots = p.coordinator if s.coordinated else None
        submitted = [a for a in result.actions if p.executor.submit(group, a, s.desired)]
        for action in submitted:
            if action.kind == "restart":
                p.operations.granted(action.node)
            elif action.kind == "recreate":
                p.upgrades.nodes.granted(action.node)
            log.info("action_started", node=action.node, action=action.kind, reason=action.reason)
        if result.meta_ready:
            self._remember_topology()
        budget, controls = self._last_budget, self.controls()
        p.upgrades.observe(
            upgrades.situation(
                s.desired,
                observation,
                result,
                self.agent,
                p.coordinator.view if s.coordinated else None,
                p.images.current,
                budget.files_differ if budget is not None else None,
                (controls.paused, controls.all_paused),
            )
        )
        if self.prober is not None:
            targets = probe_targets(s.desired, result, observation.containers)
            self.prober.update({n.name: n for n in s.desired.nodes}, targets, self.probe_settings())
        p.store_sync.share(s.desired, result, observation, self.records, p.images.current)
        p.store_sync.hand_over(result.releasable)
        self.last_plan = result
        self._publish(observation, result)
        async with self.cycled:
            self.cycled.notify_all()
        duration = time.monotonic() - started
        p.metrics.reconcile_duration.observe(duration)
        event = "cycle" if submitted or result.notes else "cycle_idle"
        (log.info if event == "cycle" else log.debug)(
            event,
            cycle=self._cycle,
            state=str(result.cluster_state),
            actions=len(submitted),
            failures=len(result.notes),
            duration_ms=round(duration * 1000, 1),
        )
        return result

    def _budget(self) -> planning.Budget:
        budget = self._coordinated_budget()
        checks: dict[str, decide_upgrades.Preflight | None] = {self.agent: self.parts.images.current}
        if self.setting.coordinated:
            for host, record in self.parts.coordinator.view.agents.items():
                if host != self.agent:
                    checks[host] = decide_upgrades.Preflight.parse(record.preflight)
        missing = decide_upgrades.images_missing(self.setting.desired.spec_hash, checks)
        if missing is not None:
            budget = planning.Budget(**{**budget.__dict__, "images_missing": missing})
        self._last_budget = budget
        return budget

    def _coordinated_budget(self) -> planning.Budget:
        s = self.setting
        if not s.coordinated:
            return planning.Budget(s.spec.supervisor.max_unavailable)
        budget = self.parts.coordinator.budget(
            s.spec.supervisor.max_unavailable,
            True,
            {n.name: n.role for n in s.desired.nodes},
            {n.name for n in s.desired.nodes if n.is_local},
            s.desired.spec_hash,
        )
        newer = self.parts.coordinator.newer_file()
        if newer is not None and budget.files_differ is None:
            budget = planning.Budget(**{**budget.__dict__, "files_differ": newer})
        return budget

    def _note(self, note: planning.Note) -> None:
        self.parts.record_event(note.node, note.type, note.reason, note.message)
        if note.type in ("budget_wait", "engine_restarted"):
            log.info(note.type, node=note.node, reason=note.reason, detail=note.message)
            return
        log.warning(
            "node_failed" if note.type != "crashloop" else "node_crashloop",
            node=note.node,
            kind=note.type,
            reason=note.reason,
            detail=note.message,
        )
        if note.type != "crashloop":
            self.parts.metrics.count_restart(note.node, note.type)

    def on_outcome(self, outcome: executor.Outcome) -> None:
        """An action finished (from the executor's task): remembered for the next plan."""
        action, p = outcome.action, self.parts
        if action.kind == "restart":
            p.operations.finished(action.node, None if outcome.ok else outcome.error)
        elif action.kind == "recreate":
            p.upgrades.nodes.finished(action.node, None if outcome.ok else outcome.error)
        if outcome.ok:
            done = f"{action.kind} done" + (f" ({outcome.detail})" if outcome.detail else "")
            p.record_event(action.node, action.kind, action.reason, done)
        elif outcome.step == "slot":
            self.failed[action.node] = ("slot", outcome.error or "waiting for disruption budget")
        else:
            self.failed[action.node] = (outcome.step or action.kind, outcome.error or "action failed")
            p.record_event(action.node, "action_failed", outcome.error, f"{action.kind} failed")
        self.wake()

    def status_line(self, result: Plan | None) -> str:
        reload = self.reload_result
        return reports.status_line(result, self.engine_error, None if reload.ok else reload.error)

    def _remember_topology(self) -> None:
        if self._topology_recorded:  # written once, at the first ready meta: no stat per cycle
            return
        with contextlib.suppress(OSError):
            topology.remember(self.setting.spec, self.setting.desired)
            self._topology_recorded = True

    def _publish(self, observation: Observation, result: Plan | None) -> None:
        c, s = self.parts.coordinator, self.setting
        self.snapshot = Snapshot(
            cycle=self._cycle,
            loop_at=time.monotonic(),
            desired=s.desired,
            reload=self.reload_result,
            probe_interval_s=s.spec.supervisor.probe_interval,
            agent=self.agent,
            observation=observation,
            plan=result or self.last_plan,
            records=dict(self.records),
            engine_error=observation.engine_error,
            store=c.view,
            coordination=Coordination(
                c.available,
                c.why_unavailable,
                c.endpoint,
                s.coordinated,
                c.view.revision,
                c.watching,
                c.confirmed_at,
            ),
            backup=self.parts.backup_status(),
        )
        self.parts.published(self.snapshot)

    # -- the loop -----------------------------------------------------------------------------------

    async def run(
        self,
        group: asyncio.TaskGroup,
        stop: asyncio.Event,
        before_cycle: Callable[[], object],
    ) -> None:
        """Cycles until `stop` is set; `before_cycle` is awaited first when it returns an awaitable
        (the daemon's pending reload)."""
        p = self.parts
        while not stop.is_set():
            self.wake_event.clear()
            pending = before_cycle()
            if asyncio.iscoroutine(pending):
                await pending
            try:
                result = await self.cycle(group)
            except Exception:
                log.exception("cycle_failed", cycle=self._cycle)
                result = None
            if result is not None:
                if not self.ready.is_set():
                    self.ready.set()
                    p.notifier.ready(self.status_line(result))
                else:
                    p.notifier.status(self.status_line(result))
                p.notifier.watchdog()  # only a completed cycle feeds the watchdog
            elif self.engine_error:
                p.notifier.status(self.status_line(None))
            await self._sleep(result)

    async def _sleep(self, result: Plan | None) -> None:
        s, p = self.setting, self.parts
        now = time.monotonic()
        timeout = ENGINE_RETRY_S if self.engine_error else s.spec.supervisor.probe_interval
        if s.coordinated:  # the lease is renewed only while cycles complete: at least every TTL/3
            timeout = min(timeout, s.spec.supervisor.agent_ttl / 3)
        if p.notifier.watchdog_interval_s is not None:
            timeout = min(timeout, p.notifier.watchdog_interval_s / 2)
        if result is not None and result.next_wake_at is not None:
            timeout = min(timeout, max(0.0, result.next_wake_at - now))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.wake_event.wait()
