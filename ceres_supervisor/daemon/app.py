"""The daemon's lifecycle: start, the reconcile loop, reload, signals, stop.

One root TaskGroup holds the long-lived tasks, each named: `reconcile-loop`, `docker-events`,
`probes`, `coordination`, `signals` (and `status-api`). Signal handlers and Docker events only set
a wake-up event or a flag; each cycle re-observes everything (`observing`), plans purely
(`planning`) and hands actions to the executor (`executing`). A cycle survives any exception, and
so does a reload (`reloading`). Every loop iteration ends by publishing one immutable `Snapshot`:
the API reads nothing else. Stopping is staged under one deadline: STOPPING=1, the API closed,
the loop finished, the agent's records revoked, the rest cancelled, then `on_exit`; a second
signal exits at once, containers left as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import Awaitable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Final

import aiohttp
import structlog

from ceres_supervisor import __version__
from ceres_supervisor.actions import executor
from ceres_supervisor.adapters import logs, systemd
from ceres_supervisor.adapters.engine import Engine, EngineEvent
from ceres_supervisor.cluster import coordinator
from ceres_supervisor.daemon import reloading, shutdown, storesync
from ceres_supervisor.decisions import planning
from ceres_supervisor.decisions.planning import NodeRecord, Plan
from ceres_supervisor.decisions.targets import probe_targets
from ceres_supervisor.desired import containers as desired_mod
from ceres_supervisor.desired import loading, locality, secrets, topology
from ceres_supervisor.desired.containers import DesiredCluster
from ceres_supervisor.model.errors import DesiredStateError, SecretError
from ceres_supervisor.model.observed import Observation
from ceres_supervisor.observation import probes
from ceres_supervisor.observation.observer import Inflight, Observer, follow_events
from ceres_supervisor.operations import pauses, restarts
from ceres_supervisor.surfaces import journal, metrics, reports
from ceres_supervisor.surfaces.snapshot import Coordination, Event, ReloadResult, Snapshot

log = structlog.get_logger(__name__)

EVENTS_KEPT: Final = 1000
WAKING_ACTIONS: Final = frozenset({"start", "die", "oom", "destroy", "pause", "unpause"})
ENGINE_RETRY_S: Final = 1.0
def agent_name(place: locality.Locality) -> str:
    """`--host ADDR`, else the first address of this machine the file names, else its name."""
    return place.host or min(place.hosts(), default="") or socket.gethostname()


class Supervisor:
    """One cluster, one daemon. Owns the engine, the prober, the executor and the records."""

    def __init__(
        self,
        loaded: loading.Loaded,
        place: locality.Locality,
        config_path: str | None = None,
        docker_url: str | None = None,
        notifier: systemd.Notifier | None = None,
        listen: str | None = None,
    ) -> None:
        self.listen = listen
        """`run --listen`: kept over every reload of the file."""
        self.loaded = loaded
        self.config_path = config_path or loaded.source
        self.spec = loaded.spec
        self.locality = place
        self.desired = desired_mod.build(loaded.spec, secrets.resolve, place.is_local)
        self.policy = planning.Policy.of(loaded.spec.supervisor)
        self.engine = Engine(loaded.spec.cluster.name, base_url=docker_url)
        self.observer = Observer(self.engine, place)
        self.records: dict[str, NodeRecord] = {}
        self.events = journal.Journal.open(loaded.spec.cluster.state_dir, EVENTS_KEPT, agent_name(place))
        self.metrics = metrics.Metrics(lambda: self.snapshot)
        self.reload_result = ReloadResult(True, None, None)
        self.agent = agent_name(place)
        self.identity = coordinator.Identity(self.agent, __version__, self.spec.supervisor.listen)
        self.coordinator = coordinator.Coordinator(
            self.spec.cluster.name,
            self.identity,
            self._store_endpoints(),
            self.spec.supervisor.agent_ttl,
            self.wake,
        )
        self.snapshot = Snapshot(
            0, None, self.desired, self.reload_result, self.spec.supervisor.probe_interval, self.agent
        )
        self.notifier = notifier or systemd.Notifier()
        self._topology_recorded = False
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._reload_requested = False
        self._reload_waiters: list[asyncio.Future[ReloadResult]] = []
        self.signals = shutdown.Signals(self._request_stop, self.request_reload)
        self._random = random.Random()
        self._failed: dict[str, tuple[str, str]] = {}
        self._cycle = 0
        self._last_plan: Plan | None = None
        self._prober: probes.Prober | None = None
        self._executor = executor.Executor(
            self.engine,
            loaded.spec.supervisor.stop_timeout,
            self._on_outcome,
            flush=self._flush,
            on_step=self._on_step,
        )
        self._session: aiohttp.ClientSession | None = None
        self._group: asyncio.TaskGroup | None = None
        self._cycled = asyncio.Condition()
        self.pauses = pauses.PauseBook.open(self.spec.cluster.state_dir)
        self.store_sync = storesync.StoreSync(self.coordinator, self.identity, self.pauses)
        self.operations = restarts.Operations(self, lambda: self._session, None)
        self.ready = asyncio.Event()
        """Set after the first completed cycle (READY=1)."""

    # -- inputs: all of them only record and wake -------------------------------------------------

    @property
    def engine_error(self) -> str | None:
        """Why the last observation of Docker failed, or None."""
        return self.observer.engine_error

    @property
    def coordinated(self) -> bool:
        """Several machines share this cluster: stops by choice need the store."""
        return any(not n.is_local for n in self.desired.nodes)

    def _store_endpoints(self) -> list[str]:
        return [f"http://{m.host}:{m.client_port}" for m in self.spec.meta.nodes]

    def wake(self) -> None:
        self._wake.set()

    def request_stop(self) -> None:
        self.signals.stop()

    def _request_stop(self) -> None:
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
        if event.host and not self.locality.owns(event.host):
            return  # another supervisor's container
        if event.action in ("die", "oom"):
            code = f"exit {event.exit_code}" if event.exit_code is not None else None
            at = datetime.fromtimestamp(event.received_ns / 1e9, UTC)
            self.record_event(event.node or None, event.action, code, f"container {event.action}", at)
        elif event.action == "start":
            self.record_event(event.node or None, "started", None, "container started")
        if event.action in WAKING_ACTIONS:
            self._wake.set()

    def _on_outcome(self, outcome: executor.Outcome) -> None:
        action = outcome.action
        if action.kind == "restart":
            self.operations.finished(action.node, None if outcome.ok else outcome.error)
        if outcome.ok:
            self.record_event(action.node, action.kind, action.reason, f"{action.kind} done")
        elif outcome.step == "slot":
            self._failed[action.node] = ("slot", outcome.error or "waiting for disruption budget")
        else:
            self._failed[action.node] = (outcome.step or action.kind, outcome.error or "action failed")
            self.record_event(action.node, "action_failed", outcome.error, f"{action.kind} failed")
        self._wake.set()

    def _on_step(self, node: str, text: str) -> None:
        self.operations.step(node, text)

    async def _flush(self, node: desired_mod.DesiredNode) -> str:
        """`POST /debug/flush_memtable` before a planned stop; a failure is reported, not fatal."""
        session = self._session
        if session is None:
            return "no HTTP session"
        try:
            return await probes.flush_memtable(session, node, self.spec.supervisor.stop_timeout)
        except probes.ProbeErrors as err:
            log.warning("flush_failed", node=node.name, error=str(err))
            return f"failed ({type(err).__name__}: {err}); stopping anyway"

    # -- what operations need (restarts.Host) --------------------------------------------------

    @property
    def current_plan(self) -> Plan | None:
        return self._last_plan

    @property
    def current_desired(self) -> DesiredCluster:
        return self.desired

    def leader(self) -> str | None:
        observation = self.snapshot.observation
        return observation.leader.member if observation and observation.leader else None

    def remote_agent(self, node: str) -> tuple[str, str] | None:
        target = self.desired.node(node)
        if target is None or target.is_local:
            return None
        view = self.coordinator.view
        host = view.agent_of(node)
        record = view.agents.get(host or "")
        if host is None or record is None:
            return None
        listen = record.listen.replace("0.0.0.0", "127.0.0.1")
        return host, listen if listen.startswith("http") else f"http://{listen}"

    async def cycled(self) -> None:
        async with self._cycled:
            await self._cycled.wait()

    def count_planned(self, node: str) -> None:
        self.metrics.count_restart(node, "planned")

    def spawn(self, coro: Awaitable[None], name: str) -> None:
        if self._group is None:
            raise RuntimeError("the supervisor is not running")
        self._group.create_task(coro, name=name)  # type: ignore[arg-type]

    async def pause(self, nodes: frozenset[str], pause: bool, everything: bool) -> str:
        """The operator's pause or resume; returns where it holds."""
        answer = await self.store_sync.pause(nodes, pause, everything)
        self.wake()
        return answer

    def _controls(self) -> planning.Controls:
        current = self.pauses.current
        return planning.Controls(current.nodes, current.all, self.operations.restart_reasons())

    # -- the loop ---------------------------------------------------------------------------------

    async def cycle(self, group: asyncio.TaskGroup) -> Plan | None:
        """One observe -> plan -> execute -> report. None when Docker could not be observed."""
        started = time.monotonic()
        self._cycle += 1
        failed, self._failed = self._failed, {}
        inflight = Inflight(
            dict(self._executor.busy), failed
        )  # before listing: a finishing action never looks idle
        observation = await self.observer.observe(self.desired, self._prober, inflight)
        if observation.engine_error is not None:
            self._failed = {**failed, **self._failed}  # not planned: keep them for later
            self._publish(observation, None)
            return None
        if observation.engine_restart_exits:
            self.record_event(None, "engine_restarted", None, "docker engine restarted")
        local = {n.name for n in self.desired.nodes if n.is_local}
        coordinated = self.coordinated
        budget = (
            self.coordinator.budget(
                self.spec.supervisor.max_unavailable,
                True,
                {n.name: n.role for n in self.desired.nodes},
                local,
                self.desired.spec_hash,
            )
            if coordinated
            else planning.Budget(self.spec.supervisor.max_unavailable)
        )
        result = planning.plan(
            self.desired,
            observation,
            self.records,
            observation.at,
            lambda: self._random.uniform(-0.2, 0.2),
            self.policy,
            budget,
            self._controls(),
        )
        self.records = result.records
        for note in result.notes:
            self._note(note)
        self._executor.slots = self.coordinator if coordinated else None
        submitted = [a for a in result.actions if self._executor.submit(group, a, self.desired)]
        for action in submitted:
            if action.kind == "restart":
                self.operations.granted(action.node)
        submitted += self._retire(group, observation)
        for action in submitted:
            log.info("action_started", node=action.node, action=action.kind, reason=action.reason)
        if result.meta_ready:
            self._remember_topology()
        if self._prober is not None:
            targets = probe_targets(self.desired, result, observation.containers)
            self._prober.update({n.name: n for n in self.desired.nodes}, targets, self.probe_settings())
        self.store_sync.share(self.desired, result, observation, self.records)
        await self.store_sync.sync(result.releasable)
        self._last_plan = result
        self._publish(observation, result)
        async with self._cycled:
            self._cycled.notify_all()
        duration = time.monotonic() - started
        self.metrics.reconcile_duration.observe(duration)
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

    def _note(self, note: planning.Note) -> None:
        self.record_event(note.node, note.type, note.reason, note.message)
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
            self.metrics.count_restart(note.node, note.type)

    def _retire(self, group: asyncio.TaskGroup, observation: Observation) -> list[planning.Action]:
        """Stop and remove this supervisor's containers whose node is not in the file (taken out by
        a reload, or while the daemon was down). Their data directories are kept."""
        started = []
        for orphan in observation.orphans:
            if orphan.node not in observation.busy:
                action = planning.Action(
                    "remove", orphan.node, orphan.id, "removed from the desired-state file"
                )
                if self._executor.submit(group, action, self.desired):
                    started.append(action)
        return started

    def status_line(self, result: Plan | None) -> str:
        return reports.status_line(
            result, self.engine_error, None if self.reload_result.ok else self.reload_result.error
        )

    def probe_settings(self) -> probes.ProbeSettings:
        s = self.spec
        return probes.ProbeSettings(
            s.supervisor.probe_interval,
            s.supervisor.probe_timeout,
            s.release.meta_health_path,
            s.cluster.name,
            s.release.root_path,
            s.release.meta_leader_key.encode(),
        )

    def _remember_topology(self) -> None:
        if self._topology_recorded:  # written once, at the first ready meta: no stat per cycle
            return
        with contextlib.suppress(OSError):
            topology.remember(self.spec, self.desired)
            self._topology_recorded = True

    def _publish(self, observation: Observation, result: Plan | None) -> None:
        c = self.coordinator
        self.snapshot = Snapshot(
            cycle=self._cycle,
            loop_at=time.monotonic(),
            desired=self.desired,
            reload=self.reload_result,
            probe_interval_s=self.spec.supervisor.probe_interval,
            agent=self.agent,
            observation=observation,
            plan=result or self._last_plan,
            records=dict(self.records),
            engine_error=observation.engine_error,
            store=c.view,
            coordination=Coordination(c.available, c.detail, c.endpoint, self.coordinated),
        )
        self.events.published(self.snapshot)
        self.metrics.published(self.snapshot)

    async def reconcile_loop(self, group: asyncio.TaskGroup) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            if self._reload_requested:
                await self._reload_now()
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
                self.notifier.watchdog()  # only a completed cycle feeds the watchdog
            elif self.engine_error:
                self.notifier.status(self.status_line(None))
            await self._sleep(result)

    async def _sleep(self, result: Plan | None) -> None:
        now = time.monotonic()
        timeout = ENGINE_RETRY_S if self.engine_error else self.spec.supervisor.probe_interval
        if self.notifier.watchdog_interval_s is not None:
            timeout = min(timeout, self.notifier.watchdog_interval_s / 2)
        if result is not None and result.next_wake_at is not None:
            timeout = min(timeout, max(0.0, result.next_wake_at - now))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    # -- reload (SIGHUP) ----------------------------------------------------------------------------

    async def _reload_now(self) -> None:
        """RELOADING=1, the reload, READY=1, and an answer for every caller, whatever happens."""
        self._reload_requested = False
        waiters, self._reload_waiters = self._reload_waiters, []
        self.notifier.reloading()
        try:
            reloaded = await self.reload()
        except Exception as err:  # e.g. a corrupt topology.json: keep the last good state
            log.exception("reload_crashed")
            reloaded = self._refuse(f"internal error while reloading: {type(err).__name__}: {err}")
        finally:
            self.snapshot = replace(self.snapshot, reload=self.reload_result)
            self.notifier.ready(self.status_line(self._last_plan))
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(reloaded)

    def _refuse(self, message: str) -> ReloadResult:
        log.error("reload_failed", error=message)
        self.reload_result = ReloadResult(False, message, datetime.now(UTC))
        self.record_event(None, "reload_failed", message, "kept the last good desired state")
        return self.reload_result

    async def reload(self) -> ReloadResult:
        """Read and validate the file; keep the last good spec when it is not usable."""
        now = datetime.now(UTC)
        try:
            new = await reloading.prepare(self.config_path, self.spec, self.locality)
        except (DesiredStateError, SecretError, locality.LocalityError) as err:
            return self._refuse(err.render() if isinstance(err, DesiredStateError) else str(err))
        loaded = loading.with_listen(new.loaded, self.listen)
        if loaded.digest == self.loaded.digest:
            log.info("desired_state_unchanged")
        else:
            log.info("desired_state_reloaded", spec_hash=new.desired.spec_hash)
        removed = {n.name for n in self.desired.nodes} - {n.name for n in new.desired.nodes}
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
        self.loaded, self.spec, self.desired, self.locality = loaded, loaded.spec, new.desired, new.place
        self.observer.locality = new.place
        self.policy = planning.Policy.of(loaded.spec.supervisor)
        self._executor.stop_timeout_s = loaded.spec.supervisor.stop_timeout
        self.coordinator.endpoints = self._store_endpoints()
        self.reload_result = ReloadResult(True, None, now)
        self.record_event(None, "reloaded", None, f"spec {new.desired.spec_hash}")
        return self.reload_result

    # -- lifecycle ----------------------------------------------------------------------------------

    async def _events_task(self) -> None:
        def on_break(why: str) -> None:
            self.observer.engine_interrupted(why)
            self._wake.set()

        await follow_events(self.engine, self._on_engine_event, on_break)

    async def run(self, api: shutdown.ApiHandle | None = None, handle_signals: bool = True) -> int:
        """Run until stopped. Returns the process exit code."""
        if handle_signals:
            self.signals.install()
        connector = aiohttp.TCPConnector(force_close=True, limit=64)
        budget_s = shutdown.shutdown_budget_s(self.spec.supervisor.stop_timeout)
        log.info(
            "supervisor_starting",
            cluster=self.spec.cluster.name,
            nodes=len(self.desired.nodes),
            spec_hash=self.desired.spec_hash,
            agent=self.agent,
            hosts=sorted(self.locality.hosts()),
        )
        loop_task: asyncio.Task[None] | None = None
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                self._session = session
                self._prober = probes.Prober(
                    session, self.probe_settings(), self.wake, self.metrics.probe_duration.observe
                )
                try:
                    async with asyncio.TaskGroup() as group:
                        self._group = group
                        group.create_task(self._events_task(), name="docker-events")
                        group.create_task(self._prober.run(), name="probes")
                        group.create_task(
                            self.coordinator.run(session, self.spec.supervisor.probe_timeout),
                            name="coordination",
                        )
                        loop_task = group.create_task(self.reconcile_loop(group), name="reconcile-loop")
                        group.create_task(
                            shutdown.first_stages(
                                self._stop,
                                self.notifier,
                                api,
                                lambda: loop_task,
                                self.coordinator.close,
                                self.spec.supervisor.probe_timeout * 2,
                            ),
                            name="signals",
                        )
                        if api is not None:
                            group.create_task(api.serve_forever(), name="status-api")
                except* shutdown.ShutdownRequested:
                    pass
                stopping_started = time.monotonic()
                if self.spec.supervisor.on_exit == "stop":
                    remaining = budget_s - shutdown.LOOP_FINISH_S - (time.monotonic() - stopping_started)
                    await shutdown.stop_cluster(
                        self.engine,
                        self.observer.containers,
                        self.notifier,
                        max(1.0, min(self.spec.supervisor.stop_timeout, remaining / 2)),
                    )
        finally:
            if handle_signals:
                self.signals.remove()
            self.engine.close()
            log.info("supervisor_stopped", on_exit=self.spec.supervisor.on_exit)
        return 0
