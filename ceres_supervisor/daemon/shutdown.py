"""Stopping the daemon: signals, the stages of a stop, and `on_exit = "stop"`.

Signal handlers only count and set the stop flag (SIGTERM/SIGINT) or ask for a reload (SIGHUP);
a second SIGTERM/SIGINT exits at once, leaving the containers as they are. The stop itself runs in
the `signals` task: STOPPING=1, the API closed, the current cycle allowed to finish, the agent's
records revoked (the other machines see it leave at once); then the root TaskGroup is torn down,
and with `on_exit = "stop"` the CeresDB nodes then meta are stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, NoReturn, Protocol

import structlog

from ceres_supervisor.actions import executor
from ceres_supervisor.adapters.engine import Engine, EngineError
from ceres_supervisor.adapters.systemd import Notifier
from ceres_supervisor.model.observed import ObservedContainer

log = structlog.get_logger(__name__)

LOOP_FINISH_S: Final = 15.0
"""At stop, how long the current cycle may take to finish before it is cancelled."""
FORCED_EXIT_CODE: Final = 130


class ShutdownRequested(Exception):
    """Raised by the `signals` task to tear the root TaskGroup down."""


class ApiHandle(Protocol):
    async def serve_forever(self) -> None: ...

    async def close(self) -> None: ...


def shutdown_budget_s(stop_timeout_s: float) -> float:
    """The whole stop, under systemd's TimeoutStopSec (90 s in the unit): the loop's finish and
    CeresDB then meta, each within stop_timeout (default: 80 s)."""
    return LOOP_FINISH_S + 2 * stop_timeout_s + 5.0


class Signals:
    """SIGTERM/SIGINT ask for a stop (a second one exits at once), SIGHUP for a reload."""

    def __init__(self, request_stop: Callable[[], None], request_reload: Callable[[], object]) -> None:
        self._request_stop = request_stop
        self._request_reload = request_reload
        self.count = 0

    def stop(self) -> None:
        self.count += 1
        self._request_stop()

    def on_signal(self, signum: int) -> None:
        if self.count >= 1:
            log.warning("supervisor_forced_exit", signal=signal.Signals(signum).name)
            os._exit(FORCED_EXIT_CODE)  # the second signal: at once, containers left as they are
        self.stop()

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._request_reload)

    def remove(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def first_stages(
    stop: asyncio.Event,
    notifier: Notifier,
    api: ApiHandle | None,
    loop_task: Callable[[], asyncio.Task[None] | None],
    close_store: Callable[[], Awaitable[None]],
    store_timeout_s: float,
) -> NoReturn:
    """Waits for a stop, then STOPPING=1, the API closed, the loop finished, the agent's records
    revoked; then raises to tear the TaskGroup down (events, probes, actions in flight)."""
    await stop.wait()
    notifier.stopping()
    log.info("supervisor_stopping")
    if api is not None:
        with contextlib.suppress(Exception):
            await api.close()
    task = loop_task()
    if task is not None:
        with contextlib.suppress(TimeoutError, Exception):
            await asyncio.wait_for(asyncio.shield(task), LOOP_FINISH_S)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(close_store(), store_timeout_s)
    raise ShutdownRequested


async def stop_cluster(
    engine: Engine,
    containers: Callable[[], Awaitable[Sequence[ObservedContainer]]],
    notifier: Notifier,
    timeout_s: float,
) -> None:
    """`on_exit = "stop"`: this machine's CeresDB nodes, then meta, each within `timeout_s`."""
    notifier.status("stopping the cluster")
    log.info("stopping_cluster", timeout_s=timeout_s)
    try:
        problems = await executor.stop_cluster(engine, containers, timeout_s, remove=False)
    except EngineError as err:
        problems = [str(err)]
    for problem in problems:
        log.error("stop_failed", detail=problem)
