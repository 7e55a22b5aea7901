"""The daemon's lifecycle: start, run, reload, stop. The loop itself is `loop`; the store
synchronisation `storesync`; the signal and stop stages `shutdown`.

One root TaskGroup holds the long-lived tasks, each named: `reconcile-loop`, `docker-events`,
`probes`, `coordination`, `store-sync`, `signals` (and `status-api`). Signal handlers and Docker
events only set a wake-up event or a flag. A reload (`reloading`) runs at the top of a cycle and
survives any exception. The API reads the loop's last snapshot and reaches the daemon only through
`surfaces.api.Daemon`.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
import structlog

from ceres_supervisor import __version__
from ceres_supervisor.actions import executor, images
from ceres_supervisor.adapters import etcd, logs, systemd
from ceres_supervisor.adapters.dockerread import EngineEvent
from ceres_supervisor.adapters.engine import Engine
from ceres_supervisor.cluster import coordinator
from ceres_supervisor.cluster.view import Identity
from ceres_supervisor.daemon import reloading, shutdown, storesync
from ceres_supervisor.daemon.loop import Loop, Parts, Setting
from ceres_supervisor.decisions import planning
from ceres_supervisor.decisions.planning import NodeRecord, Plan
from ceres_supervisor.desired import containers as desired_mod
from ceres_supervisor.desired import loading, locality, secrets
from ceres_supervisor.desired.containers import DesiredCluster
from ceres_supervisor.model import versions
from ceres_supervisor.model.addresses import advertise_url
from ceres_supervisor.model.spec import DesiredState
from ceres_supervisor.observation import probes
from ceres_supervisor.observation.observer import Observer, follow_events
from ceres_supervisor.observation.prober import Prober
from ceres_supervisor.operations import backups, pauses, restarts, upgrades
from ceres_supervisor.surfaces import journal, metrics
from ceres_supervisor.surfaces.snapshot import Event, ReloadResult, Snapshot

log = structlog.get_logger(__name__)

EVENTS_KEPT: Final = 1000
WAKING_ACTIONS: Final = frozenset({"start", "die", "oom", "destroy", "pause", "unpause"})
OBSERVE_MIN_S: Final = 2.0
"""The shortest Docker observation deadline (with a short agent_ttl)."""


def agent_name(place: locality.Locality) -> str:
    """`--host ADDR`, else the first address of this machine the file names, else its name."""
    return place.host or min(place.hosts(), default="") or socket.gethostname()


def observe_timeout_s(spec: DesiredState, coordinated: bool) -> float:
    """How long one observation of Docker may take before the cycle reports it unobservable: with
    several machines a third of agent_ttl, so that a hung Docker Engine shows as `unknown` on the
    other machines within agent_ttl."""
    if not coordinated:
        return 10.0
    return max(OBSERVE_MIN_S, min(10.0, spec.supervisor.agent_ttl / 3))


class Supervisor:
    """One cluster, one daemon: builds the parts, runs them, reloads and stops them."""

    def __init__(
        self,
        loaded: loading.Loaded,
        place: locality.Locality,
        config_path: str | None = None,
        docker_url: str | None = None,
        notifier: systemd.Notifier | None = None,
        listen: str | None = None,
        advertise: str | None = None,
        store_endpoints: list[str] | None = None,
    ) -> None:
        self.listen = listen
        """`run --listen`: kept over every reload of the file."""
        self.config_path = config_path or loaded.source
        self.store_endpoints = store_endpoints or [
            f"http://{m.host}:{m.client_port}" for m in loaded.spec.meta.nodes
        ]
        """The etcd members this agent talks to: the meta nodes' client addresses, or `run --store`."""
        desired = desired_mod.build(loaded.spec, secrets.resolve, place.is_local)
        setting = Setting(loaded, desired, place, planning.Policy.of(loaded.spec.supervisor))
        self.engine = Engine(loaded.spec.cluster.name, base_url=docker_url)
        self.engine.list_timeout_s = observe_timeout_s(loaded.spec, setting.coordinated)
        self.events = journal.Journal.open(loaded.spec.cluster.state_dir, EVENTS_KEPT, agent_name(place))
        self.metrics = metrics.Metrics(lambda: self.snapshot)
        self.agent = agent_name(place)
        self.identity = Identity(
            self.agent,
            __version__,
            loaded.spec.supervisor.listen,
            advertise_url(loaded.spec.supervisor.listen, place.host or self.agent, advertise),
            loaded.spec.cluster.generation,
        )
        self.coordinator = coordinator.Coordinator(
            loaded.spec.cluster.name, self.identity, loaded.spec.supervisor.agent_ttl, self.wake
        )
        self.notifier = notifier or systemd.Notifier()
        self._stop = asyncio.Event()
        self.signals = shutdown.Signals(
            self._request_stop,
            self.request_reload,
            lambda: shutdown.stop_deadline_s(self.spec.supervisor.stop_timeout),
        )
        self._session: aiohttp.ClientSession | None = None
        self._group: asyncio.TaskGroup | None = None
        self.pauses = pauses.PauseBook.open(loaded.spec.cluster.state_dir, place.host)
        self.operations = restarts.Operations(self, lambda: self._session, None)
        self.upgrades = upgrades.Upgrades(self, self.operations, lambda: self._session, None)
        self.images = images.ImageCheck(self.engine, self.wake)
        self._executor = executor.Executor(
            self.engine,
            loaded.spec.supervisor.stop_timeout,
            self._on_outcome,
            flush=self._flush,
            on_step=self._on_step,
            is_up=self._is_up,
            paused=lambda node: self.pauses.current.all or node in self.pauses.current.nodes,
        )
        self.store_sync = storesync.StoreSync(self.coordinator, self.identity, self.pauses, self.wake)
        parts = Parts(
            Observer(self.engine, place),
            self._executor,
            self.coordinator,
            self.store_sync,
            self.operations,
            self.metrics,
            self.notifier,
            self.record_event,
            lambda: self.backups.status,
            self.images,
            self.upgrades,
            journal.fan_out(self.events.published, self.metrics.published),
        )
        self.loop = Loop(parts, setting, self.agent)
        self.reloads = reloading.Reloads(
            self.config_path, listen, self.loop, self.notifier, self.record_event, self._sources, self._apply
        )
        self.backups = backups.Schedule(
            lambda: self.spec,
            self.coordinator,
            self.agent,
            lambda: self.loop.last_plan is not None and self.loop.last_plan.meta_ready,
            lambda host: self.setting.locality.is_local(host),  # noqa: PLW0108 (a reload replaces locality)
            self._on_backup,
        )

    # -- what the loop and the API read --------------------------------------------------------------

    @property
    def setting(self) -> Setting:
        return self.loop.setting

    @property
    def spec(self) -> DesiredState:
        return self.loop.setting.spec

    @property
    def desired(self) -> DesiredCluster:
        return self.loop.setting.desired

    @property
    def snapshot(self) -> Snapshot:
        return self.loop.snapshot

    @property
    def records(self) -> dict[str, NodeRecord]:
        return self.loop.records

    @property
    def ready(self) -> asyncio.Event:
        """Set after the first completed cycle (READY=1)."""
        return self.loop.ready

    @property
    def engine_error(self) -> str | None:
        """Why the last observation of Docker failed, or None."""
        return self.loop.engine_error

    @property
    def observer(self) -> Observer:
        return self.loop.parts.observer

    # -- inputs: all of them only record and wake -------------------------------------------------

    def wake(self) -> None:
        self.loop.wake()

    def request_stop(self) -> None:
        self.signals.stop()

    def _request_stop(self) -> None:
        self._stop.set()
        self.wake()

    def request_reload(self) -> asyncio.Future[ReloadResult]:
        """SIGHUP, POST /v1/reload and `ceres-supervisor reload` all land here (coalesced)."""
        return self.reloads.request()

    def record_event(
        self, node: str | None, type_: str, reason: str | None, message: str, at: datetime | None = None
    ) -> None:
        self.events.append(Event(at or datetime.now(UTC), node, type_, reason, message))

    def _on_backup(self) -> None:
        """The scheduled backups changed: a good one sets the metric; the next snapshot shows it."""
        at = self.backups.status.last_success_at
        if at is not None:
            self.metrics.backup_succeeded(self.spec.cluster.name, self.agent, at)
        self.wake()

    def _on_outcome(self, outcome: executor.Outcome) -> None:
        self.loop.on_outcome(outcome)

    def _on_step(self, node: str, text: str) -> None:
        """A step of the executor's restart or recreate: the operation asking for it shows it."""
        self.operations.step(node, text)
        self.upgrades.nodes.step(node, text)

    def _on_engine_event(self, event: EngineEvent) -> None:
        if event.container_id:
            self.engine.invalidate(event.container_id)
        if event.host and not self.setting.locality.owns(event.host):
            return  # another supervisor's container
        if event.action in ("die", "oom"):
            code = f"exit {event.exit_code}" if event.exit_code is not None else None
            at = datetime.fromtimestamp(event.received_ns / 1e9, UTC)
            self.record_event(event.node or None, event.action, code, f"container {event.action}", at)
        elif event.action == "start":
            self.record_event(event.node or None, "started", None, "container started")
        if event.action in WAKING_ACTIONS:
            self.wake()

    async def _flush(self, node: desired_mod.DesiredNode) -> str:
        """`POST /debug/flush_memtable` before a planned stop, within half of stop_timeout (the
        server answers only when every table is flushed); a failure is reported, not fatal."""
        session = self._session
        if session is None:
            return "no HTTP session"
        try:
            return await probes.flush_memtable(session, node, self.spec.supervisor.stop_timeout / 2)
        except probes.ProbeErrors as err:
            log.warning("flush_failed", node=node.name, error=str(err))
            return f"failed ({type(err).__name__}: {err}); stopping anyway"

    async def _is_up(self, node: desired_mod.DesiredNode) -> bool:
        """Does the node answer its health route now (a stop of a node still starting waits)?"""
        if self._session is None:
            return False
        result = await probes.probe_ceresdb(self._session, node, self.spec.supervisor.probe_timeout)
        return result.ok

    # -- what operations and the API need (restarts.Host, api.Daemon) ------------------------------

    @property
    def current_plan(self) -> Plan | None:
        return self.loop.last_plan

    @property
    def current_desired(self) -> DesiredCluster:
        return self.desired

    def leader(self) -> str | None:
        observation = self.snapshot.observation
        return observation.leader.member if observation and observation.leader else None

    def remote_agent(self, node: str) -> tuple[str, str] | None:
        """(host, API URL) of the agent running another machine's `node`, as it advertises it."""
        target = self.desired.node(node)
        if target is None or target.is_local:
            return None
        view = self.coordinator.view
        host = view.agent_of(node)
        record = view.agents.get(host or "")
        if host is None or record is None or not record.url:
            return None
        return host, record.url

    async def cycled(self) -> None:
        async with self.loop.cycled:
            await self.loop.cycled.wait()

    def count_planned(self, node: str) -> None:
        self.metrics.count_restart(node, "planned")

    def spawn(self, coro: Awaitable[None], name: str) -> None:
        if self._group is None:
            raise RuntimeError("the supervisor is not running")
        self._group.create_task(coro, name=name)  # type: ignore[arg-type]

    async def claim_operation(self, doc: Mapping[str, Any]) -> str | None:
        if not self.setting.coordinated:
            return None
        try:
            holder = await self.coordinator.claim("operation", doc)
        except etcd.EtcdError as err:
            raise restarts.Refused(f"cannot take the cluster-wide operation key: {err}") from None
        if holder is None:
            return None
        held = self.coordinator.view.claims.get("operation") or {}
        what = f"{held.get('kind', 'an operation')} {held.get('id', '')}"
        return f"{holder} ({what}, asked by {held.get('who', '?')})"

    async def release_operation(self) -> None:
        await self.coordinator.unclaim("operation")

    async def update_operation(self, doc: Mapping[str, Any]) -> None:
        if not self.setting.coordinated:
            return
        try:
            await self.coordinator.update_claim("operation", doc)
        except etcd.EtcdError as err:
            raise restarts.Refused(f"cannot rewrite the cluster-wide operation key: {err}") from None

    async def pause(self, nodes: frozenset[str], pause: bool, everything: bool) -> str:
        """The operator's pause or resume; returns where it holds."""
        answer = await self.store_sync.pause(nodes, pause, everything)
        self.wake()
        return answer

    # -- reload (SIGHUP): `reloading.Reloads` reads the file, this applies what it accepted -------

    def _sources(self) -> list[versions.Release]:
        """The releases the containers run (this agent's, and the others' as they publish them)."""
        last = self.upgrades.last
        found = (versions.parse_release(text) for text in (last.running.values() if last else ()))
        return [r for r in found if r is not None]

    def _apply(self, loaded: loading.Loaded, new: reloading.Reloaded) -> None:
        """The accepted file, swapped in: one reference for the loop, and the settings that live
        elsewhere (the observer's locality, Docker's deadline, the stop timeout, the generation)."""
        current, fresh = self.setting, loaded.spec.supervisor
        removed = {n.name for n in current.desired.nodes} - {n.name for n in new.desired.nodes}
        for name in removed:
            self.loop.records.pop(name, None)
        if current.spec.supervisor.log_level != fresh.log_level:
            logs.configure(fresh.log_level)
        self.loop.setting = Setting(loaded, new.desired, new.place, planning.Policy.of(fresh))
        self.observer.locality = new.place
        self.engine.list_timeout_s = observe_timeout_s(loaded.spec, self.setting.coordinated)
        self._executor.stop_timeout_s = fresh.stop_timeout
        self.identity.generation = loaded.spec.cluster.generation

    # -- lifecycle ----------------------------------------------------------------------------------

    async def _events_task(self) -> None:
        def on_break(why: str) -> None:
            self.observer.engine_interrupted(why)
            self.wake()

        await follow_events(self.engine, self._on_engine_event, on_break)

    def _after_group_s(self) -> float:
        """What the stages after the TaskGroup need of the stop deadline."""
        stop_timeout = self.spec.supervisor.stop_timeout
        return 2 * stop_timeout + 2.0 if self.spec.supervisor.on_exit == "stop" else 1.0

    async def run(self, api: shutdown.ApiHandle | None = None, handle_signals: bool = True) -> int:
        """Run until stopped. Returns the process exit code."""
        if handle_signals:
            self.signals.install()
        # Connections are kept alive between probes, store calls and other agents' APIs: a new TCP
        # connection per probe cost the probing most of its CPU. A pooled connection to a server
        # that died is closed by the kernel with it; one to a server that hangs times out as a new
        # one would, and is then dropped.
        connector = aiohttp.TCPConnector(limit=64)
        log.info(
            "supervisor_starting",
            cluster=self.spec.cluster.name,
            nodes=len(self.desired.nodes),
            spec_hash=self.desired.spec_hash,
            agent=self.agent,
            advertise=self.identity.advertise,
            hosts=sorted(self.setting.locality.hosts()),
        )
        loop_task: asyncio.Task[None] | None = None
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                self._session = session
                prober = Prober(
                    session, self.loop.probe_settings(), self.wake, self.metrics.probe_duration.observe
                )
                self.loop.prober = prober
                store = etcd.Etcd(session, self.store_endpoints, self.spec.supervisor.probe_timeout)
                try:
                    async with asyncio.TaskGroup() as group:
                        self._group = group
                        group.create_task(self._events_task(), name="docker-events")
                        group.create_task(prober.run(), name="probes")
                        group.create_task(self.coordinator.run(store), name="coordination")
                        group.create_task(self.store_sync.run(), name="store-sync")
                        group.create_task(self.backups.run(session), name="backups")
                        group.create_task(self.images.run(), name="images")
                        loop_task = group.create_task(
                            self.loop.run(group, self._stop, self.reloads.due), name="reconcile-loop"
                        )
                        group.create_task(
                            shutdown.first_stages(
                                self._stop,
                                self.signals,
                                self.notifier,
                                api,
                                lambda: loop_task,
                                self._executor,
                                self.coordinator.close,
                                self._after_group_s,
                            ),
                            name="signals",
                        )
                        if api is not None:
                            group.create_task(api.serve_forever(), name="status-api")
                except* shutdown.ShutdownRequested:
                    pass
                if self.spec.supervisor.on_exit == "stop":
                    await shutdown.stop_cluster(
                        self.engine,
                        self.observer.containers,
                        self.notifier,
                        self.signals.deadline or shutdown.Deadline(self._after_group_s()),
                        self.spec.supervisor.stop_timeout,
                    )
        finally:
            if handle_signals:
                self.signals.remove()
            self.engine.close()
            log.info("supervisor_stopped", on_exit=self.spec.supervisor.on_exit)
        return 0
