"""Reading a changed desired-state file for a running daemon (SIGHUP, `POST /v1/reload`).

`prepare` reads and validates the file, refuses what a running daemon cannot change (each would
start nodes on other data or under other names), decides the locality of hosts it has not seen
before and builds the new desired cluster. It changes nothing: the daemon swaps one reference when
it returns, and keeps its last good state when it raises. File and DNS work runs in threads.
`Reloads` coalesces the requests and runs one reload at the top of a cycle, answering every caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import structlog

from ceres_supervisor.adapters import systemd
from ceres_supervisor.daemon.loop import Loop
from ceres_supervisor.decisions import upgrades
from ceres_supervisor.desired import containers as desired_mod
from ceres_supervisor.desired import loading, locality, secrets, topology
from ceres_supervisor.desired.containers import DesiredCluster
from ceres_supervisor.model import versions
from ceres_supervisor.model.errors import DesiredStateError, Problem, SecretError
from ceres_supervisor.model.spec import DesiredState
from ceres_supervisor.model.spec import nodes as spec_nodes
from ceres_supervisor.surfaces.snapshot import ReloadResult

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Reloaded:
    loaded: loading.Loaded
    desired: DesiredCluster
    place: locality.Locality


def static_problems(
    running: DesiredState, new: DesiredState, sources: Iterable[versions.Release] = ()
) -> list[Problem]:
    """What a running daemon cannot change, each with its key path. `sources`: the releases the
    containers run (an upgrade goes from each of them to the new file's: the pair table decides;
    from CeresDB 1.2.7 to HoraeDB 2.0.0 the flavor changes, keeping the 1.x data)."""
    problems = []
    problem = topology.problem(new)
    if problem is not None:
        problems.append(problem)
    refused = next(
        (v.refused for s in (running.release, *sources) if (v := upgrades.pair(s, new.release)).refused), None
    )
    if running.cluster.flavor != new.cluster.flavor and refused is not None:
        problems.append(
            Problem(
                "cluster.flavor",
                f"cannot change from {running.cluster.flavor!r} to {new.cluster.flavor!r}: {refused}",
            )
        )
    elif refused is not None:
        problems.append(Problem("cluster.version", f"cannot upgrade: {refused}"))
    if running.cluster.flavor == new.cluster.flavor == "horaedb" and (
        running.cluster.keep_ceresdb_data != new.cluster.keep_ceresdb_data
    ):
        problems.append(
            Problem(
                "cluster.keep_ceresdb_data",
                "cannot change while the cluster runs: its nodes would start on another etcd root "
                f"({running.release.root_path} -> {new.release.root_path}) and catalog: other data",
            )
        )
    for key, old, now in (
        ("cluster.name", running.cluster.name, new.cluster.name),
        ("cluster.state_dir", running.cluster.state_dir, new.cluster.state_dir),
    ):
        if old != now:
            problems.append(
                Problem(
                    key,
                    f"cannot change from {old!r} to {now!r} while the supervisor runs (nodes would start on "
                    "other data); stop the daemon, move the data, start it again",
                )
            )
    members = [(m.name, m.host, m.client_port, m.peer_port) for m in running.meta.nodes]
    changed = [(m.name, m.host, m.client_port, m.peer_port) for m in new.meta.nodes]
    if members != changed:
        problems.append(
            Problem(
                "meta.nodes",
                "cannot change the meta members (names, hosts, client or peer ports) of a running cluster: "
                "CeresMeta's embedded etcd keeps its member list, and changing it is a runtime "
                "reconfiguration of etcd this supervisor does not do; put the file back "
                f"({', '.join(f'{n}@{h}:{c}/{pp}' for n, h, c, pp in members)})",
            )
        )
    return problems


async def prepare(
    path: str, running: DesiredState, place: locality.Locality, sources: Iterable[versions.Release] = ()
) -> Reloaded:
    """Raises DesiredStateError, SecretError or LocalityError; touches nothing."""
    loaded = await asyncio.to_thread(loading.load, path)
    problems = static_problems(running, loaded.spec, sources)
    if problems:
        raise DesiredStateError(loaded.source, problems)
    hosts = [n.host for n in spec_nodes(loaded.spec)]
    new_place = await asyncio.to_thread(locality.decide, hosts, place)
    desired = await asyncio.to_thread(desired_mod.build, loaded.spec, secrets.resolve, new_place.is_local)
    return Reloaded(loaded, desired, new_place)


class Reloads:
    """SIGHUP, POST /v1/reload and `ceres-supervisor reload`: requests that arrive before the loop
    gets to them share one reload, run at the top of a cycle (`due`), which survives any exception
    and answers every caller. A file that is not usable is refused and the last good one kept."""

    def __init__(
        self,
        path: str,
        listen: str | None,
        loop: Loop,
        notifier: systemd.Notifier,
        record_event: Callable[[str | None, str, str | None, str], None],
        sources: Callable[[], list[versions.Release]],
        apply: Callable[[loading.Loaded, Reloaded], None],
    ) -> None:
        self.path = path
        self.listen = listen
        self.loop = loop
        self.notifier = notifier
        self.record_event = record_event
        self.sources = sources
        self.apply = apply
        self._requested = False
        self._waiters: list[asyncio.Future[ReloadResult]] = []

    def request(self) -> asyncio.Future[ReloadResult]:
        waiter: asyncio.Future[ReloadResult] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._requested = True
        self.loop.wake()
        return waiter

    def due(self) -> Awaitable[None] | None:
        """The reload to run now, if one was asked for."""
        return self._now() if self._requested else None

    async def _now(self) -> None:
        """RELOADING=1, the reload, READY=1, and an answer for every caller, whatever happens."""
        self._requested = False
        waiters, self._waiters = self._waiters, []
        self.notifier.reloading()
        try:
            reloaded = await self.reload()
        except Exception as err:  # e.g. a corrupt topology.json: keep the last good state
            log.exception("reload_crashed")
            reloaded = self._refuse(f"internal error while reloading: {type(err).__name__}: {err}")
        finally:
            self.loop.snapshot = replace(self.loop.snapshot, reload=self.loop.reload_result)
            self.notifier.ready(self.loop.status_line(self.loop.last_plan))
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(reloaded)

    def _refuse(self, message: str) -> ReloadResult:
        log.error("reload_failed", error=message)
        self.loop.reload_result = ReloadResult(False, message, datetime.now(UTC))
        self.record_event(None, "reload_failed", message, "kept the last good desired state")
        return self.loop.reload_result

    async def reload(self) -> ReloadResult:
        """Read and validate the file; keep the last good spec when it is not usable."""
        now = datetime.now(UTC)
        current = self.loop.setting
        try:
            new = await prepare(self.path, current.spec, current.locality, self.sources())
        except (DesiredStateError, SecretError, locality.LocalityError) as err:
            return self._refuse(err.render() if isinstance(err, DesiredStateError) else str(err))
        loaded = loading.with_listen(new.loaded, self.listen)
        if loaded.digest == current.loaded.digest:
            log.info("desired_state_unchanged")
        else:
            log.info("desired_state_reloaded", spec_hash=new.desired.spec_hash)
        old, fresh = current.spec.supervisor, loaded.spec.supervisor
        if (old.listen, old.token_file) != (fresh.listen, fresh.token_file):
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
        self.apply(loaded, new)
        self.loop.reload_result = ReloadResult(True, None, now)
        self.record_event(None, "reloaded", None, f"spec {new.desired.spec_hash}")
        return self.loop.reload_result
