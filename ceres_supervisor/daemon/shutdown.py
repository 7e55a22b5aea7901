"""Stopping the daemon: signals, the stages of a stop under one deadline, and `on_exit = "stop"`.

Signal handlers only count and set the stop flag (SIGTERM/SIGINT) or ask for a reload (SIGHUP);
a second SIGTERM/SIGINT exits at once, leaving the containers as they are. The stop runs in the
`signals` task, every stage within what is left of one deadline counted from the first signal
(`stop_deadline_s`, below systemd's TimeoutStopSec by STOP_MARGIN_S whatever the node count):

1. STOPPING=1, the API closed;
2. the current cycle finishes and no new action starts; the actions in flight run to their end,
   so that a restart is never left between its stop and its start (a stop takes at most
   `stop_timeout`);
3. the agent's records revoked (the other machines see it leave at once);
4. the root TaskGroup torn down (events, probes, the store task);
5. with `on_exit = "stop"`: every CeresDB node at once, then every meta member at once, each
   phase within half of what is left (at most `stop_timeout`), however many there are.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, NoReturn, Protocol

import structlog

from ceres_supervisor.actions import executor
from ceres_supervisor.adapters.engine import Engine, EngineError
from ceres_supervisor.adapters.systemd import Notifier
from ceres_supervisor.model.observed import ObservedContainer

log = structlog.get_logger(__name__)

LOOP_FINISH_S: Final = 15.0
"""At most this long for the current cycle to finish."""
STOP_MARGIN_S: Final = 10.0
"""What the deadline leaves under systemd's TimeoutStopSec: the exit itself, a last slow call."""
API_CLOSE_S: Final = 2.0
FORCED_EXIT_CODE: Final = 130


class ShutdownRequested(Exception):
    """Raised by the `signals` task to tear the root TaskGroup down."""


class ApiHandle(Protocol):
    async def serve_forever(self) -> None: ...

    async def close(self) -> None: ...


def stop_deadline_s(stop_timeout_s: float) -> float:
    """The whole stop, from the first signal: the cycle's finish and the two phases of `on_exit =
    "stop"` (CeresDB, then meta), each within stop_timeout, plus the small stages (80 s by
    default). The unit's TimeoutStopSec must be STOP_MARGIN_S above it (90 s by default)."""
    return LOOP_FINISH_S + 2 * stop_timeout_s + 5.0


class Deadline:
    """Time left until `at` on the monotonic clock."""

    def __init__(self, total_s: float) -> None:
        self.at = time.monotonic() + total_s

    def left(self, keep_s: float = 0.0) -> float:
        """What is left, keeping `keep_s` for later stages (never below 0)."""
        return max(0.0, self.at - time.monotonic() - keep_s)


class Signals:
    """SIGTERM/SIGINT ask for a stop (a second one exits at once), SIGHUP for a reload. The first
    one starts the deadline."""

    def __init__(
        self,
        request_stop: Callable[[], None],
        request_reload: Callable[[], object],
        deadline_s: Callable[[], float],
    ) -> None:
        self._request_stop = request_stop
        self._request_reload = request_reload
        self._deadline_s = deadline_s
        self.count = 0
        self.deadline: Deadline | None = None

    def stop(self) -> None:
        self.count += 1
        if self.deadline is None:
            self.deadline = Deadline(self._deadline_s())
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
    signals: Signals,
    notifier: Notifier,
    api: ApiHandle | None,
    loop_task: Callable[[], asyncio.Task[None] | None],
    actions: executor.Executor,
    close_store: Callable[[], Awaitable[None]],
    keep_s: Callable[[], float],
) -> NoReturn:
    """Stages 1-3 (see the module docstring), then raises to tear the TaskGroup down. `keep_s`:
    the time the stages after the TaskGroup need (on_exit)."""
    await stop.wait()
    deadline = signals.deadline or Deadline(0.0)
    notifier.stopping()
    log.info("supervisor_stopping", deadline_s=round(deadline.left(), 1))
    if api is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(api.close(), min(API_CLOSE_S, deadline.left(keep_s())))
    actions.closing = True  # no action starts from here on
    task = loop_task()
    if task is not None:
        with contextlib.suppress(TimeoutError, Exception):
            await asyncio.wait_for(asyncio.shield(task), min(LOOP_FINISH_S, deadline.left(keep_s())))
    finished = await actions.drain(deadline.left(keep_s() + 2.0))
    if not finished:
        log.warning("actions_cut_short", nodes=sorted(actions.busy))
    with contextlib.suppress(Exception):
        await asyncio.wait_for(close_store(), min(2.0, max(0.1, deadline.left(keep_s()))))
    raise ShutdownRequested


async def stop_cluster(
    engine: Engine,
    containers: Callable[[], Awaitable[Sequence[ObservedContainer]]],
    notifier: Notifier,
    deadline: Deadline,
    stop_timeout_s: float,
) -> None:
    """`on_exit = "stop"`: this machine's CeresDB nodes, then meta, each phase within half of what
    the deadline leaves (at most `stop_timeout`)."""
    notifier.status("stopping the cluster")
    log.info("stopping_cluster", left_s=round(deadline.left(), 1))
    try:
        problems = await executor.stop_cluster(
            engine, containers, lambda: max(1.0, min(stop_timeout_s, deadline.left(1.0) / 2)), remove=False
        )
    except EngineError as err:
        problems = [str(err)]
    for problem in problems:
        log.error("stop_failed", detail=problem)
