"""Carry out the planner's actions: the only layer with side effects on containers and files.

At most one action per node is in flight; different nodes run in parallel, each as a named task
in the caller's TaskGroup. An action never raises into the group: its failure is reported to
`on_done` with a reason a person can act on, and the next plan counts it as a failure.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from . import files
from .desired import DesiredCluster, DesiredNode
from .engine import Engine, EngineError, EngineImageMissing
from .planning import Action

log = structlog.get_logger(__name__)


class PreflightError(Exception):
    """A node cannot be started as things are on this machine (port taken, ...)."""


@dataclass(frozen=True)
class Outcome:
    action: Action
    ok: bool
    error: str | None
    duration_s: float


def port_in_use(port: int) -> bool:
    """With host networking the servers bind 0.0.0.0: a port is free only if we can bind it too."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as err:
            return err.errno == errno.EADDRINUSE
    return False


def prepare(node: DesiredNode) -> None:
    """Write the node's config atomically (0600 with a secret) and make its data directory."""
    mode = files.SECRET_MODE if node.has_secret else files.PLAIN_MODE
    files.write_atomic(node.config_path, node.config_text, mode)
    node.data_dir.mkdir(parents=True, exist_ok=True)


def preflight(node: DesiredNode) -> None:
    taken = [f"{port} ({kind})" for kind, port in node.ports.items() if port_in_use(port)]
    if taken:
        raise PreflightError(f"port {', '.join(taken)} already in use on this machine by another process")


class Executor:
    def __init__(self, engine: Engine, stop_timeout_s: float, on_done: Callable[[Outcome], None]) -> None:
        self.engine = engine
        self.stop_timeout_s = stop_timeout_s
        self.on_done = on_done
        self.busy: dict[str, str] = {}

    def submit(self, group: asyncio.TaskGroup, action: Action, desired: DesiredCluster) -> bool:
        """Start `action` unless its node already has one in flight."""
        if action.node in self.busy:
            return False
        node = desired.node(action.node)
        if node is None and action.kind != "remove":
            return False
        self.busy[action.node] = action.kind
        group.create_task(self._run(action, node), name=f"action-{action.node}")
        return True

    async def _run(self, action: Action, node: DesiredNode | None) -> None:
        started = time.monotonic()
        error: str | None = None
        try:
            await self.apply(action, node)
        except EngineImageMissing:
            assert node is not None
            error = (
                f"image {node.container.image} is not present on this host "
                "(ceres-supervisor does not pull images: docker pull or docker load it)"
            )
        except (EngineError, PreflightError) as err:
            error = str(err)
        except OSError as err:
            error = f"cannot write {err.filename or 'files'}: {err.strerror or err}"
        except Exception as err:  # an action fails only its node, never the daemon
            log.exception("action_crashed", node=action.node, action=action.kind)
            error = f"internal error: {type(err).__name__}: {err}"
        finally:
            self.busy.pop(action.node, None)
        outcome = Outcome(action, error is None, error, time.monotonic() - started)
        if error is None:
            log.info(
                "action_done",
                node=action.node,
                action=action.kind,
                reason=action.reason,
                duration_s=round(outcome.duration_s, 3),
            )
        else:
            log.error("action_failed", node=action.node, action=action.kind, error=error)
        self.on_done(outcome)

    async def apply(self, action: Action, node: DesiredNode | None) -> None:
        if action.kind == "remove":  # a node taken out of the file; its data directory stays
            assert action.container_id is not None
            await self.engine.stop(action.container_id, self.stop_timeout_s)
            await self.engine.remove(action.container_id)
            return
        assert node is not None
        if action.kind == "stop":
            assert action.container_id is not None
            await self.engine.stop(action.container_id, self.stop_timeout_s)
            return
        if action.kind == "recreate":
            assert action.container_id is not None
            await self.engine.stop(action.container_id, self.stop_timeout_s)
            await self.engine.remove(action.container_id)
        await asyncio.to_thread(prepare, node)
        preflight(node)
        if action.kind == "start":
            assert action.container_id is not None
            await self.engine.start(action.container_id)
        else:
            await self.engine.create_and_start(node.container)


async def stop_cluster(engine: Engine, timeout_s: float, remove: bool) -> list[str]:
    """Every managed container of the cluster (orphans too): CeresDB nodes first, in parallel,
    then meta; each within `timeout_s`. Data directories are kept."""
    problems: list[str] = []
    containers = await engine.list_containers()
    for role in ("ceresdb", "meta"):
        targets = [c for c in containers if c.role == role]

        async def stop_one(container_id: str, name: str) -> None:
            try:
                await engine.stop(container_id, timeout_s)
                if remove:
                    await engine.remove(container_id)
                log.info("container_stopped", node=name, removed=remove)
            except EngineError as err:
                problems.append(f"{name}: {err}")

        async with asyncio.TaskGroup() as group:
            for c in targets:
                group.create_task(stop_one(c.id, c.node), name=f"stop-{c.node}")
    return problems
