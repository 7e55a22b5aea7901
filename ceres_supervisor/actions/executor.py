"""Carry out the planner's actions: the only layer with side effects on containers and files.

At most one action per node is in flight; different nodes run in parallel, each as a named task
in the caller's TaskGroup. An action never raises into the group: its failure is reported to
`on_done` with a reason a person can act on, and the next plan counts it as a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from ceres_supervisor.adapters.engine import Engine, EngineError, EngineImageMissing
from ceres_supervisor.decisions.planning import Action
from ceres_supervisor.desired import files, identity
from ceres_supervisor.desired.containers import DesiredCluster, DesiredNode
from ceres_supervisor.model.errors import SlotRefused
from ceres_supervisor.model.observed import ObservedContainer

log = structlog.get_logger(__name__)


class PreflightError(Exception):
    """A node cannot be started as things are on this machine (port taken, ...)."""


class Slots(Protocol):
    """Disruption slots of the cluster-wide budget (`coordination`); none on one machine."""

    async def acquire(self, node: str, role: str, reason: str) -> None:
        """Take the slot for `node` or raise SlotRefused saying who holds the budget."""

    async def release(self, releasable: frozenset[str]) -> None:
        """Give back the slots this agent holds for these nodes."""


Flush = Callable[[DesiredNode], Awaitable[str]]
"""`POST /debug/flush_memtable` on a CeresDB node before a planned stop; returns what it said."""

IsUp = Callable[[DesiredNode], Awaitable[bool]]
"""One health probe of a node: does it answer now?"""

STOPS = ("remove", "stop", "recreate", "restart")
"""Actions that begin by stopping the node's container."""

UP_POLL_S = 0.5
"""How often a stop of a node that is still starting asks whether it is up yet."""


@dataclass(frozen=True)
class Outcome:
    action: Action
    ok: bool
    error: str | None
    duration_s: float
    step: str | None = None
    """The step that failed: "slot", "stop", "remove", "create", "start" (None when ok)."""
    detail: str | None = None
    """How the stop went when that is worth saying (a node stopped while it was still starting)."""


def port_in_use(port: int) -> bool:
    """With host networking the servers bind 0.0.0.0: a port is free only if we can bind it too."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as err:
            return err.errno == errno.EADDRINUSE
    return False


def prepare(node: DesiredNode, owner: identity.Owner, as_is: bool = False) -> None:
    """Write the node's config atomically (0600 with a secret) and make its data directory, marked
    for it; refuse a directory marked for another node or cluster (PreflightError). `as_is`: the
    container runs an older release, whose config file stays as it was (only the marker is checked)."""
    if not as_is:
        mode = files.SECRET_MODE if node.has_secret else files.PLAIN_MODE
        files.write_atomic(node.config_path, node.config_text, mode)
    try:
        done = identity.ensure(node.data_dir, owner, node.name)
    except identity.IdentityError as err:
        raise PreflightError(str(err)) from None
    if done != "kept":
        log.info("data_dir_marked", node=node.name, path=str(node.data_dir), how=done)


def preflight(node: DesiredNode) -> None:
    taken = [f"{port} ({kind})" for kind, port in node.ports.items() if port_in_use(port)]
    if taken:
        raise PreflightError(f"port {', '.join(taken)} already in use on this machine by another process")


class Executor:
    def __init__(
        self,
        engine: Engine,
        stop_timeout_s: float,
        on_done: Callable[[Outcome], None],
        slots: Slots | None = None,
        flush: Flush | None = None,
        on_step: Callable[[str, str], None] = lambda _node, _text: None,
        is_up: IsUp | None = None,
        paused: Callable[[str], bool] = lambda _node: False,
    ) -> None:
        self.engine = engine
        self.paused = paused
        """Whether the operator has paused a node now (a stop by choice that waited for its slot
        asks again: a pause asked meanwhile wins)."""
        self.stop_timeout_s = stop_timeout_s
        self.on_done = on_done
        self.slots = slots
        self.flush = flush
        self.is_up = is_up
        self.on_step = on_step
        """Told each step of a planned restart (the operation shows them)."""
        self.busy: dict[str, str] = {}
        self.closing = False
        """The daemon stops: no new action starts (those in flight run to their end)."""
        self._idle = asyncio.Event()
        self._idle.set()
        self.owner: identity.Owner | None = None
        """Whose data directories these are (from the file of the last submit)."""

    def submit(self, group: asyncio.TaskGroup, action: Action, desired: DesiredCluster) -> bool:
        """Start `action` unless its node already has one in flight (or the daemon stops)."""
        if action.node in self.busy or self.closing:
            return False
        node = desired.node(action.node)
        if node is None and action.kind != "remove":
            return False
        self.busy[action.node] = action.kind
        self._idle.clear()
        self.owner = identity.Owner(desired.spec.cluster.name, desired.spec.cluster.flavor)
        group.create_task(self._run(action, node), name=f"action-{action.node}")
        return True

    async def drain(self, timeout_s: float) -> bool:
        """Wait until no action is in flight; False when some still are after `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        return not self.busy

    async def _run(self, action: Action, node: DesiredNode | None) -> None:
        started = time.monotonic()
        error: str | None = None
        steps: list[str] = []
        detail: str | None = None
        try:
            detail = await self.apply(action, node, steps.append)
        except SlotRefused as err:
            error = str(err)
        except EngineImageMissing:
            assert node is not None
            error = (
                f"image {node.container.image} is not present on this host "
                '(docker pull or docker load it, or set supervisor.pull = "missing")'
            )
            if action.kind == "recreate":
                error += "; nothing was stopped"
        except (EngineError, PreflightError) as err:
            error = str(err)
        except OSError as err:
            error = f"cannot write {err.filename or 'files'}: {err.strerror or err}"
        except Exception as err:  # an action fails only its node, never the daemon
            log.exception("action_crashed", node=action.node, action=action.kind)
            error = f"internal error: {type(err).__name__}: {err}"
        finally:
            self.busy.pop(action.node, None)
            if not self.busy:
                self._idle.set()
        step = steps[-1] if error is not None and steps else None
        outcome = Outcome(action, error is None, error, time.monotonic() - started, step, detail)
        if error is None:
            log.info(
                "action_done",
                node=action.node,
                action=action.kind,
                reason=action.reason,
                duration_s=round(outcome.duration_s, 3),
                detail=detail,
            )
        elif step == "slot":
            log.info("action_waits", node=action.node, action=action.kind, detail=error)
        else:
            log.error("action_failed", node=action.node, action=action.kind, step=step, error=error)
        self.on_done(outcome)

    async def data_dir_free(self, node: DesiredNode) -> None:
        """No start beside a running container that writes to the node's data directory: the
        container being replaced has exited (a stop returns once it has), and nothing else holds it."""
        users = await self.engine.data_users(str(node.data_dir))
        if users:
            raise PreflightError(
                f"data directory {node.data_dir} is in use by running container {', '.join(users)}: "
                "not started beside it"
            )

    def _owner(self) -> identity.Owner:
        if self.owner is None:
            raise RuntimeError("no file submitted yet: whose data directories is unknown")
        return self.owner

    async def apply(
        self, action: Action, node: DesiredNode | None, step: Callable[[str], None]
    ) -> str | None:
        """Carry `action` out; `step` is told each step before it runs (to name what failed).
        Returns how a stop of a node still starting went (None otherwise)."""
        if action.kind in ("create", "recreate") and node is not None:
            # Before anything stops: a recreate whose image is missing would leave the node gone.
            step("image")
            if not await self.engine.image_exists(node.container.image):
                raise EngineImageMissing(f"image {node.container.image} is not present on this host")
        if action.by_choice and self.slots is not None:
            step("slot")
            role = action.role or (node.role if node is not None else "")
            await self.slots.acquire(action.node, role, action.reason)
            if self.paused(action.node):  # paused while the slot was asked for (a slow store)
                await self.slots.release(frozenset({action.node}))
                raise SlotRefused("paused by the operator while its stop waited for its slot: not stopped")
        deadline = time.monotonic() + self.stop_timeout_s
        how: str | None = None
        if action.kind in STOPS:
            assert action.container_id is not None
            killed = False
            if action.while_starting and node is not None and node.role == "ceresdb":
                step("stop")
                killed, how = await self._stop_while_starting(action.container_id, node, deadline)
            if not killed:
                await self._stop(action, action.container_id, node, deadline, step)
        if action.kind in ("stop", "remove"):
            if action.kind == "remove":
                step("remove")  # a node taken out of the file keeps its data directory
                await self.engine.remove(action.container_id or "")
            return how
        assert node is not None
        if action.kind == "restart":
            step("start")
            self.on_step(action.node, "starting")
            await asyncio.to_thread(prepare, node, self._owner(), action.as_is)
            await self.data_dir_free(node)
            await self.engine.start(action.container_id or "")
            return how
        if action.kind == "recreate":
            self.on_step(action.node, "stopped; removing it and creating it anew")
            step("remove")
            await self.engine.remove(action.container_id or "")
        step("create" if action.kind != "start" else "start")
        await asyncio.to_thread(prepare, node, self._owner(), action.as_is)
        preflight(node)
        await self.data_dir_free(node)
        if action.kind == "start":
            assert action.container_id is not None
            await self.engine.start(action.container_id)
        else:
            await self.engine.create_and_start(node.container)
        return how

    async def _stop(
        self,
        action: Action,
        container_id: str,
        node: DesiredNode | None,
        deadline: float,
        step: Callable[[str], None],
    ) -> None:
        """SIGTERM, then SIGKILL at `deadline`; a CeresDB node flushes first when the action says
        so (a planned restart, a recreate), within half of stop_timeout and inside the same deadline
        (a flush of many tables can take long: the server flushes them one after the other)."""
        if action.flush and self.flush is not None and node is not None and node.role == "ceresdb":
            step("flush")
            said = await self.flush(node)
            self.on_step(action.node, f"flush_memtable: {said}")
        step("stop")
        stop_s = max(1.0, deadline - time.monotonic())
        if action.kind in ("restart", "recreate"):
            self.on_step(action.node, f"stopping (SIGTERM, then SIGKILL after {stop_s:.0f}s)")
        await self.engine.stop(container_id, stop_s)

    async def _stop_while_starting(
        self, container_id: str, node: DesiredNode, deadline: float
    ) -> tuple[bool, str]:
        """A CeresDB node that has not come up: the real server takes SIGTERM only once it has
        started (before, the signal ends it mid-start). Wait for it to be up until the stop's
        deadline, then stop it the usual way; if it is not up by then, SIGKILL."""
        began = time.monotonic()
        self.on_step(
            node.name, f"still starting: waiting for it to come up (SIGKILL after {self.stop_timeout_s:g}s)"
        )
        while self.is_up is not None and time.monotonic() < deadline:
            if await self.is_up(node):
                return False, f"it came up after {time.monotonic() - began:.1f}s of waiting, then SIGTERM"
            await asyncio.sleep(min(UP_POLL_S, max(0.0, deadline - time.monotonic())))
        how = f"still starting after {self.stop_timeout_s:g}s: SIGKILL"
        self.on_step(node.name, how)
        await self.engine.kill(container_id)
        return True, how


async def stop_cluster(
    engine: Engine,
    containers: Callable[[], Awaitable[Sequence[ObservedContainer]]],
    timeout_s: float | Callable[[], float],
    remove: bool,
) -> list[str]:
    """Every container `containers()` lists (this supervisor's, orphans too): CeresDB nodes first,
    all at once, then meta; each phase within `timeout_s` (a callable is asked at each phase).
    Data directories are kept."""
    problems: list[str] = []
    listed = await containers()
    for role in ("ceresdb", "meta"):
        targets = {c.id: c.node for c in listed if c.role == role}
        phase_s = timeout_s() if callable(timeout_s) else timeout_s
        errors = await engine.stop_all(list(targets), phase_s)
        problems += [f"{targets[cid]}: {error}" for cid, error in errors.items()]
        for cid, name in targets.items():
            if cid in errors:
                continue
            if remove:
                try:
                    await engine.remove(cid)
                except EngineError as err:
                    problems.append(f"{name}: {err}")
                    continue
            log.info("container_stopped", node=name, removed=remove)
    return problems
