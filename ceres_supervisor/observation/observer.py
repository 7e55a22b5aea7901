"""Build one `Observation`: the containers Docker lists, the prober's latest results, what is in flight.

Used by the reconcile loop every cycle and by `plan` (the command) once. It does no planning and
takes no action. Three things it must get right, whatever the timing:
- the in-flight actions are copied before Docker is asked, so an action that finishes during the
  list can never make its node look idle and exited (and started twice);
- a meta member whose container is not running is not alive, whatever its last probe said;
- a Docker Engine that went away is followed: the first good observation after an outage names
  the containers that stopped meanwhile (they died with the engine, not by a fault of theirs).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import structlog

from ceres_supervisor.adapters.dockerread import EngineEvent
from ceres_supervisor.adapters.engine import Engine, EngineError
from ceres_supervisor.desired import identity
from ceres_supervisor.desired.containers import DesiredCluster
from ceres_supervisor.desired.locality import Locality
from ceres_supervisor.model.observed import MetaMemberProbe, Observation, ObservedContainer, ProbeResult
from ceres_supervisor.observation.prober import Prober

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Inflight:
    """What is being done to which node right now, copied before anything is listed."""

    busy: dict[str, str]
    failed: dict[str, tuple[str, str]]


class Observer:
    def __init__(self, engine: Engine, locality: Locality) -> None:
        self.engine = engine
        self.locality = locality
        self.engine_error: str | None = None
        self._outage = False
        self._running: set[str] = set()
        """IDs of the containers running at the last good observation."""
        self._containers: dict[str, ObservedContainer] = {}

    def owns(self, c: ObservedContainer) -> bool:
        """This supervisor's container: its host label is one of our hosts. A container from
        before the label existed is ours only when no `--host` splits the machine."""
        if c.host:
            return self.locality.owns(c.host)
        return self.locality.host is None

    def engine_interrupted(self, why: str) -> None:
        """The events stream broke: dockerd may be restarting. The next good list will tell."""
        if not self._outage:
            log.warning("docker_engine_interrupted", error=why)
        self._outage = True

    async def containers(self) -> list[ObservedContainer]:
        """This supervisor's managed containers, straight from Docker. Raises EngineError."""
        return [c for c in await self.engine.list_containers() if self.owns(c)]

    async def observe(
        self, desired: DesiredCluster, prober: Prober | None, inflight: Inflight
    ) -> Observation:
        now, wall = time.monotonic(), datetime.now(UTC)
        names = {n.name for n in desired.nodes}
        restarted: frozenset[str] = frozenset()
        orphans: tuple[ObservedContainer, ...] = ()
        try:
            listed = await self.containers()
        except EngineError as err:
            if self.engine_error is None:
                log.warning("docker_engine_unavailable", error=str(err))
            self.engine_error, self._outage = str(err), True
        else:
            if self._outage:
                restarted = frozenset(c.id for c in listed if c.id in self._running and not c.is_running)
                log.info("docker_engine_back", stopped_meanwhile=len(restarted))
            self.engine_error, self._outage = None, False
            self._running = {c.id for c in listed if c.is_running}
            self._containers = {c.node: c for c in listed if c.node in names}
            orphans = tuple(c for c in listed if c.node not in names)
        containers = dict(self._containers)
        owner = identity.Owner(desired.spec.cluster.name, desired.spec.cluster.flavor)
        dirs = [(n.name, n.data_dir) for n in desired.nodes if n.is_local]
        misplaced = await asyncio.to_thread(identity.problems, dirs, owner)
        return Observation(
            at=now,
            wall=wall,
            containers=containers,
            orphans=orphans,
            engine_error=self.engine_error,
            probes=dict(prober.probes) if prober else {},
            meta=self._members(desired, prober, containers, now, wall),
            leader=prober.leader if prober else None,
            leases=prober.leases if prober else None,
            busy=inflight.busy,
            failed_actions=inflight.failed,
            engine_restart_exits=restarted,
            identity_problems=misplaced,
        )

    @staticmethod
    def _members(
        desired: DesiredCluster,
        prober: Prober | None,
        containers: dict[str, ObservedContainer],
        now: float,
        wall: datetime,
    ) -> dict[str, MetaMemberProbe]:
        """Every meta member of the file (never a stale one), dead when its container does not run."""
        known = prober.meta if prober else {}
        members = {}
        for node in desired.meta:
            member = known.get(node.name)
            c = containers.get(node.name)
            if node.is_local and (
                c is None or not c.is_running or member is None or member.alive.run_id != c.run_key
            ):
                why = "container not running" if c is None or not c.is_running else "not probed yet"
                member = MetaMemberProbe(ProbeResult(False, why, now, wall), False)
            if member is None:
                member = MetaMemberProbe(ProbeResult(False, "not probed yet", now, wall), False)
            members[node.name] = member
        return members


def with_run(member: MetaMemberProbe, c: ObservedContainer | None) -> MetaMemberProbe:
    """A member probed once, outside the prober: tie the answer to the container run it saw."""
    if c is None or not c.is_running:
        return member
    return replace(member, alive=replace(member.alive, run_id=c.run_key))


async def follow_events(
    engine: Engine, on_event: Callable[[EngineEvent], None], on_break: Callable[[str], None]
) -> None:
    """Docker's event stream, read by a thread of its own (the SDK blocks), handed to the loop.

    `on_event` runs on the event loop for each event; `on_break` when the stream breaks (the
    watcher reconnects by itself). Never returns: raises if the watcher thread ever ends, and on
    cancellation stops the stream and waits up to 5 s for the thread."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def finish() -> None:
        if not done.done():
            done.set_result(None)

    def watch() -> None:
        try:
            engine.watch_events(on_event, loop, on_break)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop may be closed already
                loop.call_soon_threadsafe(finish)

    threading.Thread(target=watch, name="docker-events", daemon=True).start()
    try:
        await asyncio.shield(done)
    finally:
        engine.stop_events()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(done), timeout=5)
    raise RuntimeError("the docker events watcher stopped unexpectedly")
