"""The daemon's lifecycle: start, the reconcile loop, events, signals, stop.

One root TaskGroup holds the long-lived tasks, each named: `reconcile-loop`, `docker-events`,
`probes`, `signals` (and `status-api` when the API runs). Signal handlers and Docker events only
set a wake-up event or a flag; each cycle re-observes everything (level-triggered), plans purely
and hands actions to the executor. A cycle survives any exception: it is logged and the next cycle
runs. Stopping the daemon leaves the containers running unless `on_exit = "stop"`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
import structlog

from . import desired as desired_mod
from . import executing, loading, logs, metrics, planning, probes, secrets, systemd, topology
from .desired import DesiredCluster
from .engine import Engine, EngineError, EngineEvent
from .errors import DesiredStateError, Problem, SecretError
from .observed import MetaMemberProbe, Observation, ObservedContainer, ProbeResult
from .planning import NodeRecord, Plan

log = structlog.get_logger(__name__)

EVENTS_KEPT: Final = 1000
WAKING_ACTIONS: Final = frozenset({"start", "die", "oom", "destroy", "pause", "unpause"})
ENGINE_RETRY_S: Final = 1.0


@dataclass(frozen=True)
class Event:
    at: datetime
    node: str | None
    type: str
    reason: str | None
    message: str


@dataclass(frozen=True)
class ReloadResult:
    ok: bool
    error: str | None
    at: datetime | None


@dataclass(frozen=True)
class Snapshot:
    """Everything the status API shows, as of the end of one cycle. Never mutated."""

    cycle: int
    at: float
    wall: datetime
    desired: DesiredCluster
    observation: Observation
    plan: Plan
    reload: ReloadResult
    records: dict[str, NodeRecord]
    engine_error: str | None = None


@dataclass
class Counters:
    restarts_by_reason: dict[tuple[str, str], int] = field(default_factory=dict)


class _Shutdown(Exception):
    """Raised by the `signals` task to tear the root TaskGroup down."""


class Supervisor:
    """One cluster, one daemon. Owns the engine, the prober, the executor and the records."""

    def __init__(
        self,
        loaded: loading.Loaded,
        config_path: str | None = None,
        docker_url: str | None = None,
        notifier: systemd.Notifier | None = None,
    ) -> None:
        self.loaded = loaded
        self.config_path = config_path or loaded.source
        self.spec = loaded.spec
        self.desired = desired_mod.build(loaded.spec, secrets.resolve)
        self.policy = planning.Policy.of(loaded.spec.supervisor)
        self.engine = Engine(loaded.spec.cluster.name, base_url=docker_url)
        self.records: dict[str, NodeRecord] = {}
        self.events: deque[Event] = deque(maxlen=EVENTS_KEPT)
        self.counters = Counters()
        self.probe_latency = metrics.Histogram(metrics.PROBE_BUCKETS_S)
        self.cycle_latency = metrics.Histogram(metrics.CYCLE_BUCKETS_S)
        self.snapshot: Snapshot | None = None
        self.reload_result = ReloadResult(True, None, None)
        self.notifier = notifier or systemd.Notifier()
        self._retiring: set[str] = set()
        self._topology_recorded = False
        """Nodes removed from the file by a reload: their containers are stopped and removed."""
        self.last_cycle_at: float | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._reload_requested = False
        self._reload_waiters: list[asyncio.Future[ReloadResult]] = []
        self._signals = 0
        self._random = random.Random()
        self._failed_actions: dict[str, str] = {}
        self._containers: dict[str, ObservedContainer] = {}
        self._orphans: tuple[ObservedContainer, ...] = ()
        self._engine_error: str | None = None
        self._cycle = 0
        self._prober: probes.Prober | None = None
        self._executor = executing.Executor(
            self.engine, loaded.spec.supervisor.stop_timeout, self._on_outcome
        )
        self.ready = asyncio.Event()
        """Set after the first completed cycle (READY=1)."""

    # -- inputs: all of them only record and wake -------------------------------------------------

    @property
    def engine_error(self) -> str | None:
        """Why the last observation of Docker failed, or None."""
        return self._engine_error

    def wake(self) -> None:
        self._wake.set()

    def request_stop(self) -> None:
        self._signals += 1
        self._stop.set()
        self._wake.set()

    def request_reload(self) -> asyncio.Future[ReloadResult]:
        """SIGHUP, POST /v1/reload and `ceres-supervisor reload` all land here. Requests that arrive
        before the loop gets to them share one reload (coalesced)."""
        waiter: asyncio.Future[ReloadResult] = asyncio.get_running_loop().create_future()
        self._reload_waiters.append(waiter)
        self._reload_requested = True
        self._wake.set()
        return waiter

    def record_event(
        self, node: str | None, type_: str, reason: str | None, message: str, at: datetime | None = None
    ) -> None:
        self.events.append(Event(at or datetime.now(UTC), node, type_, reason, message))

    def _on_engine_event(self, event: EngineEvent) -> None:
        if event.container_id:
            self.engine.invalidate(event.container_id)
        if event.action in ("die", "oom"):
            code = f"exit {event.exit_code}" if event.exit_code is not None else None
            self.record_event(
                event.node or None,
                event.action,
                code,
                f"container {event.action}",
                datetime.fromtimestamp(event.received_ns / 1e9, UTC),
            )
        elif event.action == "start":
            self.record_event(event.node or None, "started", None, "container started")
        if event.action in WAKING_ACTIONS:
            self._wake.set()

    def _on_outcome(self, outcome: executing.Outcome) -> None:
        action = outcome.action
        if outcome.ok:
            self.record_event(action.node, action.kind, action.reason, f"{action.kind} done")
        else:
            self._failed_actions[action.node] = outcome.error or "action failed"
            self.record_event(action.node, "action_failed", outcome.error, f"{action.kind} failed")
        self._wake.set()

    # -- the loop ---------------------------------------------------------------------------------

    async def observe(self) -> Observation:
        now, wall = time.monotonic(), datetime.now(UTC)
        try:
            listed = await self.engine.list_containers()
            if self._engine_error is not None:
                log.info("docker_engine_back")
            self._engine_error = None
            names = {n.name for n in self.desired.nodes}
            self._containers = {c.node: c for c in listed if c.node in names}
            self._orphans = tuple(c for c in listed if c.node not in names)
        except EngineError as err:
            if self._engine_error is None:
                log.warning("docker_engine_unavailable", error=str(err))
            self._engine_error = str(err)
        prober = self._prober
        meta = dict(prober.meta) if prober else {}
        # A local member whose container is not running (or is a newer run) is not alive, whatever
        # its last probe said: meta readiness must not lag behind a dead meta container.
        for node in self.desired.meta:
            if not node.is_local:
                continue
            c = self._containers.get(node.name)
            member = meta.get(node.name)
            if c is None or not c.is_running or member is None or member.alive.run_id != c.run_key:
                dead = ProbeResult(
                    False,
                    "container not running" if c is None or not c.is_running else "not probed yet",
                    now,
                    wall,
                )
                meta[node.name] = MetaMemberProbe(dead, False, False)
        failed, self._failed_actions = self._failed_actions, {}
        return Observation(
            at=now,
            wall=wall,
            containers=dict(self._containers),
            orphans=self._orphans,
            engine_error=self._engine_error,
            probes=dict(prober.probes) if prober else {},
            meta=meta,
            leases=prober.leases if prober else None,
            busy=dict(self._executor.busy),
            failed_actions=failed,
        )

    async def cycle(self, group: asyncio.TaskGroup) -> Plan | None:
        started = time.monotonic()
        self._cycle += 1
        observation = await self.observe()
        if observation.engine_error is not None:
            # Nothing can be planned without knowing the containers; the loop still cycled.
            self._publish(observation, self.snapshot.plan if self.snapshot else None)
            self.last_cycle_at = time.monotonic()
            return None
        result = planning.plan(
            self.desired,
            observation,
            self.records,
            observation.at,
            lambda: self._random.uniform(-0.2, 0.2),
            self.policy,
        )
        self.records = result.records
        for note in result.notes:
            self.record_event(note.node, note.type, note.reason, note.message)
            log.warning(
                "node_failed" if note.type != "crashloop" else "node_crashloop",
                node=note.node,
                kind=note.type,
                reason=note.reason,
                detail=note.message,
            )
            if note.type != "crashloop":
                key = (note.node, note.type)
                self.counters.restarts_by_reason[key] = self.counters.restarts_by_reason.get(key, 0) + 1
        submitted = [a for a in result.actions if self._executor.submit(group, a, self.desired)]
        submitted += self._retire(group, observation)
        for action in submitted:
            log.info("action_started", node=action.node, action=action.kind, reason=action.reason)
        if result.meta_ready:
            self._remember_topology()
        self._update_probe_targets(result)
        self._publish(observation, result)
        duration = time.monotonic() - started
        self.cycle_latency.observe(duration)
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

    def _retire(self, group: asyncio.TaskGroup, observation: Observation) -> list[planning.Action]:
        """Stop and remove the containers of nodes a reload took out of the file (data is kept)."""
        left = {o.node for o in observation.orphans}
        self._retiring &= left | set(observation.busy)
        started = []
        for orphan in observation.orphans:
            if orphan.node in self._retiring and orphan.node not in observation.busy:
                action = planning.Action(
                    "remove", orphan.node, orphan.id, "removed from the desired-state file"
                )
                if self._executor.submit(group, action, self.desired):
                    started.append(action)
        return started

    def status_line(self, result: Plan) -> str:
        """STATUS= for systemd: `healthy: 3/3 nodes healthy`, with what is wrong when not."""
        local = [(n, v) for n, v in result.views.items() if v.state is not planning.NodeState.REMOTE]
        healthy = sum(1 for _n, v in local if v.state is planning.NodeState.HEALTHY)
        text = f"{result.cluster_state}: {healthy}/{len(local)} nodes healthy"
        trouble = [f"{n} {v.state}" for n, v in local if v.state in planning.FAILING]
        if trouble:
            text += "; " + ", ".join(trouble)
        if not self.reload_result.ok and self.reload_result.error:
            text += "; reload failed: " + self.reload_result.error.splitlines()[-1].strip()
        return text

    def _update_probe_targets(self, result: Plan) -> None:
        if self._prober is None:
            return
        lost = any(v.state is planning.NodeState.LEASE_LOST for v in result.views.values())
        targets: list[probes.Target] = [probes.Target("leases", "leases", fast=lost)]
        for node in self.desired.nodes:
            c = self._containers.get(node.name)
            view = result.views.get(node.name)
            starting = view is not None and view.state in (
                planning.NodeState.STARTING,
                planning.NodeState.BLOCKED,
            )
            if node.role == "meta":
                run = c.run_key if c is not None and c.is_running else ""
                if node.is_local and not run:
                    continue
                targets.append(
                    probes.Target("meta", node.name, fast=not result.meta_ready or starting, run_id=run)
                )
            elif node.is_local and c is not None and c.is_running:
                targets.append(probes.Target("ceresdb", node.name, fast=starting, run_id=c.run_key))
        self._prober.update({n.name: n for n in self.desired.nodes}, targets, self._probe_settings())

    def _probe_settings(self) -> probes.ProbeSettings:
        s = self.spec
        return probes.ProbeSettings(
            s.supervisor.probe_interval,
            s.supervisor.probe_timeout,
            s.release.meta_health_path,
            s.cluster.name,
            s.release.root_path,
        )

    def _remember_topology(self) -> None:
        if self._topology_recorded:  # written once, at the first ready meta: no stat per cycle
            return
        with contextlib.suppress(OSError):
            topology.remember(self.spec, self.desired)
            self._topology_recorded = True

    def _publish(self, observation: Observation, result: Plan | None) -> None:
        if result is None:
            return
        self.snapshot = Snapshot(
            self._cycle,
            observation.at,
            observation.wall,
            self.desired,
            observation,
            result,
            self.reload_result,
            dict(self.records),
            observation.engine_error,
        )
        self.last_cycle_at = time.monotonic()

    async def reconcile_loop(self, group: asyncio.TaskGroup) -> None:
        interval = self.spec.supervisor.probe_interval
        while not self._stop.is_set():
            self._wake.clear()
            if self._reload_requested:
                self._reload_requested = False
                waiters, self._reload_waiters = self._reload_waiters, []
                self.notifier.reloading()
                reloaded = await self.reload()
                snap = self.snapshot
                self.notifier.ready(self.status_line(snap.plan) if snap else "reloaded")
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(reloaded)
            try:
                result = await self.cycle(group)
            except Exception:
                log.exception("cycle_failed", cycle=self._cycle)
                result = None
            if result is not None:
                if not self.ready.is_set():
                    self.ready.set()
                    self.notifier.ready(self.status_line(result))
                else:
                    self.notifier.status(self.status_line(result))
            elif self._engine_error:
                self.notifier.status(f"docker engine unavailable: {self._engine_error}")
            self.notifier.watchdog()
            now = time.monotonic()
            timeout = ENGINE_RETRY_S if self._engine_error else interval
            if self.notifier.watchdog_interval_s is not None:
                timeout = min(timeout, self.notifier.watchdog_interval_s / 2)
            if result is not None and result.next_wake_at is not None:
                timeout = min(timeout, max(0.0, result.next_wake_at - now))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    # -- reload (SIGHUP) ----------------------------------------------------------------------------

    async def reload(self) -> ReloadResult:
        """Read and validate the file; keep the last good spec when it is not usable."""
        now = datetime.now(UTC)
        try:
            loaded = await asyncio.to_thread(loading.load, self.config_path)
            problem = topology.problem(loaded.spec)
            if problem is not None:
                raise DesiredStateError(loaded.source, [problem])
            if loaded.spec.cluster.name != self.spec.cluster.name:
                message = "cannot change while the supervisor runs (it names the containers); stop it first"
                raise DesiredStateError(loaded.source, [Problem("cluster.name", message)])
            new_desired = await asyncio.to_thread(desired_mod.build, loaded.spec, secrets.resolve)
        except (DesiredStateError, SecretError) as err:
            message = err.render() if isinstance(err, DesiredStateError) else str(err)
            log.error("reload_failed", error=message)
            self.reload_result = ReloadResult(False, message, now)
            self.record_event(None, "reload_failed", message, "kept the last good desired state")
            return self.reload_result
        if loaded.digest == self.loaded.digest:
            log.info("desired_state_unchanged")
        else:
            log.info("desired_state_reloaded", spec_hash=new_desired.spec_hash)
        removed = {n.name for n in self.desired.nodes} - {n.name for n in new_desired.nodes}
        self._retiring |= removed
        for name in removed:
            self.records.pop(name, None)
        old = self.spec.supervisor
        if (old.listen, old.token_file) != (loaded.spec.supervisor.listen, loaded.spec.supervisor.token_file):
            log.warning(
                "reload_needs_restart",
                keys="supervisor.listen, supervisor.token_file",
                detail="the status API keeps its address and token until the daemon restarts",
            )
            self.record_event(
                None,
                "reload_partial",
                "supervisor.listen/token_file changed",
                "takes effect when the daemon restarts",
            )
        if old.log_level != loaded.spec.supervisor.log_level:
            logs.configure(loaded.spec.supervisor.log_level)
        self.loaded, self.spec, self.desired = loaded, loaded.spec, new_desired
        self.policy = planning.Policy.of(loaded.spec.supervisor)
        self._executor.stop_timeout_s = loaded.spec.supervisor.stop_timeout
        self.reload_result = ReloadResult(True, None, now)
        self.record_event(None, "reloaded", None, f"spec {new_desired.spec_hash}")
        return self.reload_result

    # -- lifecycle ----------------------------------------------------------------------------------

    async def _events_task(self) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def finish() -> None:
            if not done.done():
                done.set_result(None)

        def watch() -> None:
            try:
                self.engine.watch_events(self._on_engine_event, loop)
            finally:
                with contextlib.suppress(RuntimeError):  # the loop may be closed already
                    loop.call_soon_threadsafe(finish)

        thread = threading.Thread(target=watch, name="docker-events", daemon=True)
        thread.start()
        try:
            await asyncio.shield(done)
        finally:
            self.engine.stop_events()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(done), timeout=5)
        raise RuntimeError("the docker events watcher stopped unexpectedly")

    async def _signals_task(self) -> None:
        await self._stop.wait()
        raise _Shutdown

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)

    def _on_sighup(self) -> None:
        self.request_reload()

    def remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)

    async def run(
        self,
        extra_tasks: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] | None = None,
        handle_signals: bool = True,
    ) -> int:
        """Run until stopped. Returns the process exit code."""
        if handle_signals:
            self.install_signal_handlers()
        connector = aiohttp.TCPConnector(force_close=True, limit=64)
        log.info(
            "supervisor_starting",
            cluster=self.spec.cluster.name,
            nodes=len(self.desired.nodes),
            spec_hash=self.desired.spec_hash,
        )
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                self._prober = probes.Prober(
                    session, self._probe_settings(), self.wake, self.probe_latency.observe
                )
                try:
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self._events_task(), name="docker-events")
                        group.create_task(self._prober.run(), name="probes")
                        group.create_task(self.reconcile_loop(group), name="reconcile-loop")
                        group.create_task(self._signals_task(), name="signals")
                        for name, factory in extra_tasks or []:
                            group.create_task(factory(), name=name)
                except* _Shutdown:
                    pass
                self.notifier.stopping()
                if self.spec.supervisor.on_exit == "stop" and self._signals < 2:
                    self.notifier.status("stopping the cluster")
                    log.info("stopping_cluster", timeout_s=self.spec.supervisor.stop_timeout)
                    problems = await executing.stop_cluster(
                        self.engine, self.spec.supervisor.stop_timeout, remove=False
                    )
                    for problem in problems:
                        log.error("stop_failed", detail=problem)
        finally:
            if handle_signals:
                self.remove_signal_handlers()
            self.engine.close()
            log.info("supervisor_stopped", on_exit=self.spec.supervisor.on_exit)
        return 0


async def plan_once(
    loaded: loading.Loaded, docker_url: str | None = None
) -> tuple[DesiredCluster, Observation, Plan]:
    """What `run` (or a reload of this file) would do now, without doing it: observe once, plan once."""
    supervisor = Supervisor(loaded, docker_url=docker_url)
    connector = aiohttp.TCPConnector(force_close=True)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            settings = supervisor._probe_settings()
            prober = probes.Prober(session, settings, lambda: None)
            supervisor._prober = prober
            meta = supervisor.desired.meta
            results = await asyncio.gather(
                *(
                    probes.probe_meta(session, n, settings.health_path, settings.cluster, settings.timeout_s)
                    for n in meta
                )
            )
            prober.meta = {n.name: r for n, r in zip(meta, results, strict=True)}
            observation = await supervisor.observe()
            if observation.engine_error is not None:
                raise EngineError(observation.engine_error)
            probes_now = dict(observation.probes)
            for node in supervisor.desired.meta:  # tie each member's answer to the run it came from
                c = observation.containers.get(node.name)
                if c is not None and c.is_running and node.name in prober.meta:
                    member = prober.meta[node.name]
                    alive = replace(member.alive, run_id=c.run_key)
                    observation.meta[node.name] = replace(member, alive=alive)
                    probes_now[node.name] = alive
            for node in supervisor.desired.ceresdb:
                c = observation.containers.get(node.name)
                if node.is_local and c is not None and c.is_running:
                    probes_now[node.name] = await probes.probe_ceresdb(
                        session, node, settings.timeout_s, c.run_key
                    )
            leases = await probes.read_leases(
                session, meta, settings.root, settings.cluster, settings.timeout_s
            )
            observation = replace(observation, probes=probes_now, leases=leases)
            result = planning.plan(
                supervisor.desired, observation, {}, observation.at, lambda: 0.0, supervisor.policy
            )
            return supervisor.desired, observation, result
    finally:
        supervisor.engine.close()
