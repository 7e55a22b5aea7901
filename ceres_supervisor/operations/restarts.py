"""Planned and rolling restarts (README, Maintenance), as operations an operator can follow.

A planned restart asks the planner for one stop by choice of a node; the planner grants it within
the disruption budget (with several machines, after taking a slot in the store), the executor
flushes a CeresDB node's memtables (`POST /debug/flush_memtable`), stops it (SIGTERM within
`stop_timeout`) and starts it, and the operation waits until the node is healthy and, for CeresDB,
holds its shards again (the lease judgement, so the wait follows the version's reopen pace). It is
not a failure. A rolling restart does that to the meta followers, then the meta leader, then the
CeresDB nodes, one at a time cluster-wide (another machine's nodes through that machine's API),
and stops at the first node that is not healthy in time. Every step is kept (`GET
/v1/operations/<id>`), and the start and the end are events with who asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol

import aiohttp
import structlog

from ceres_supervisor.decisions.planning import FAILING, NodeState, Plan
from ceres_supervisor.desired.containers import DesiredCluster

log = structlog.get_logger(__name__)

KEPT: Final = 100
"""Finished operations kept for `GET /v1/operations/<id>`."""
REMOTE_POLL_S: Final = 1.0
SHARDS_WAIT_CAP_S: Final = 900.0
"""A bound on the wait for a node's shards, past the lease judgement's own (lease_lost fails it)."""


class Busy(Exception):
    """The node is already being restarted (409), with the operation doing it."""

    def __init__(self, operation: str, message: str) -> None:
        super().__init__(message)
        self.operation = operation


class Refused(Exception):
    """The operation cannot start now (409), with why."""


@dataclass
class Operation:
    id: str
    kind: Literal["restart", "rolling-restart", "upgrade", "upgrade-node"]
    who: str
    nodes: list[str]
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    steps: list[tuple[datetime, str]] = field(default_factory=list)
    outcome: str | None = None
    """None while it runs; "ok", "failed" or "cancelled"."""
    error: str | None = None
    current: str | None = None
    cancel: bool = False
    claimed: bool = False
    """It holds the cluster-wide `operation` key (a rolling one), released when it ends."""

    def step(self, text: str) -> None:
        if not self.steps or self.steps[-1][1] != text:
            self.steps.append((datetime.now(UTC), text))

    def document(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "who": self.who,
            "nodes": list(self.nodes),
            "current": self.current,
            "started_at": _rfc3339(self.started_at),
            "steps": [{"at": _rfc3339(at), "text": text} for at, text in self.steps],
            "outcome": self.outcome,
            "error": self.error,
        }


def _rfc3339(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Host(Protocol):
    """What an operation needs from the daemon."""

    agent: str
    """This agent's host name (other agents see it in `via`)."""

    @property
    def current_plan(self) -> Plan | None: ...
    @property
    def current_desired(self) -> DesiredCluster: ...
    def leader(self) -> str | None: ...
    def remote_agent(self, node: str) -> tuple[str, str] | None:
        """(agent host, its API base URL) of another machine's node, when its agent is up."""

    async def cycled(self) -> None:
        """Returns after the next completed cycle."""

    async def claim_operation(self, doc: Mapping[str, Any]) -> str | None:
        """Hold the cluster-wide `operation` key (one rolling operation at a time, every machine):
        None when this agent holds it (or runs the only machine), else who does. Raises Refused
        when the store cannot say."""

    async def release_operation(self) -> None: ...

    def record_event(self, node: str | None, type_: str, reason: str | None, message: str) -> None: ...
    def count_planned(self, node: str) -> None: ...


def order(desired: DesiredCluster, leader: str | None, role: str | None) -> list[str]:
    """Meta followers, then the meta leader, then the CeresDB nodes (file order within each)."""
    meta = [n.name for n in desired.meta]
    meta = [m for m in meta if m != leader] + [m for m in meta if m == leader]
    names = {"meta": meta, "ceresdb": [n.name for n in desired.ceresdb]}
    return names[role] if role else names["meta"] + names["ceresdb"]


class Operations:
    def __init__(
        self, host: Host, session: Callable[[], aiohttp.ClientSession | None], token: str | None
    ) -> None:
        self.host = host
        self.session = session
        self.token = token
        self.kept: OrderedDict[str, Operation] = OrderedDict()
        self.requested: dict[str, str] = {}
        """node -> operation id: planned restarts the planner should grant (Controls.restarts)."""
        self._done: dict[str, asyncio.Future[str | None]] = {}
        self._ids = itertools.count(1)
        self._started = int(time.time())

    # -- the API's entry points ------------------------------------------------------------------

    def get(self, op_id: str) -> Operation | None:
        return self.kept.get(op_id)

    def running_on(self, node: str) -> Operation | None:
        return next((op for op in self.kept.values() if op.outcome is None and op.current == node), None)

    def restart_reasons(self) -> Mapping[str, str]:
        return {node: f"planned restart ({op_id})" for node, op_id in self.requested.items()}

    async def begin(
        self,
        kind: Literal["restart", "rolling-restart"],
        nodes: list[str],
        who: str,
        spawn: Callable[[Awaitable[None], str], object],
    ) -> Operation:
        """Register an operation and start it as a task (`spawn(coro, name)`). Raises Busy, or
        Refused when another machine runs a rolling operation."""
        for node in nodes[:1] if kind == "restart" else ():
            running = self.running_on(node)
            if running is not None:
                raise Busy(running.id, f"{node} is already being restarted by operation {running.id}")
        if kind == "rolling-restart":
            rolling = ("rolling-restart", "upgrade")
            other = next((op for op in self.kept.values() if op.outcome is None and op.kind in rolling), None)
            if other is not None:
                raise Busy(other.id, f"{other.kind.replace('-', ' ')} {other.id} is still running")
        op = Operation(self.new_id(), kind, who, nodes)
        if kind == "rolling-restart":
            holder = await self.host.claim_operation({"kind": kind, "id": op.id, "who": who})
            if holder is not None:
                raise Refused(f"a rolling operation already runs on {holder}: one at a time cluster-wide")
            op.claimed = True
        if kind == "restart":
            op.current = nodes[0]
        self.keep(op)
        self.host.record_event(
            nodes[0] if kind == "restart" else None, "operation_started", who, f"{kind} {op.id}"
        )
        spawn(self._run(op), f"operation-{op.id}")
        return op

    def new_id(self) -> str:
        return f"op-{self._started}-{next(self._ids)}"

    def keep(self, op: Operation) -> None:
        """Follow `op` (`GET /v1/operations/<id>`); the oldest finished ones make room."""
        self.kept[op.id] = op
        while len(self.kept) > KEPT:
            oldest = next(iter(self.kept))
            if self.kept[oldest].outcome is None:
                break
            self.kept.pop(oldest)

    # -- running -------------------------------------------------------------------------------------

    async def _run(self, op: Operation) -> None:
        try:
            with outcome_of(op, "operation_crashed"):
                if op.kind == "restart":
                    await self._restart(op, op.nodes[0])
                else:
                    for node in op.nodes:
                        if op.cancel:
                            op.outcome, op.error = "cancelled", f"stopped before {node} (asked)"
                            break
                        await self._restart(op, node)
        finally:
            for node, op_id in list(self.requested.items()):
                if op_id == op.id:
                    self.requested.pop(node)
            if op.claimed:
                await self.host.release_operation()
            op.step(f"done: {op.outcome}" + (f" ({op.error})" if op.error else ""))
            self.host.record_event(
                op.current, "operation_done", op.outcome, f"{op.kind} {op.id} {op.who}: {op.error or 'ok'}"
            )
            log.info(
                "operation_done",
                operation=op.id,
                kind=op.kind,
                who=op.who,
                outcome=op.outcome,
                error=op.error,
            )

    async def _restart(self, op: Operation, node: str) -> None:
        op.current = node
        remote = self.host.remote_agent(node)
        if remote is not None:
            await self._remote_restart(op, node, *remote)
            return
        desired = self.host.current_desired
        target = desired.node(node)
        if target is None:
            raise OperationFailed(f"{node} is not in the desired-state file any more")
        if not target.is_local:
            raise OperationFailed(f"{node} runs on {target.host}, whose supervisor is not up")
        op.step(f"{node}: waiting for a disruption slot")
        done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.requested[node] = op.id
        self._done[node] = done
        run_before = self._run_key(node)
        try:
            while node in self.requested:  # until the planner grants the stop
                await self._cycle_or(done)
                view = self._view(node)
                if view is not None and view.reason and "waiting for disruption budget" in view.reason:
                    op.step(f"{node}: {view.reason.split('; ')[-1]}")
                if node in self.requested and view is not None and view.state in FAILING:
                    raise OperationFailed(
                        f"{node} is {view.state} ({view.reason}): the supervisor restarts it itself"
                    )
            error = await done  # the executor's flush, stop and start
        finally:
            self.requested.pop(node, None)
            self._done.pop(node, None)
        if error is not None:
            raise OperationFailed(f"{node}: {error}")
        self.host.count_planned(node)
        self.host.record_event(node, "planned_restart", op.who, f"restarted by operation {op.id}")
        await self.until_healthy(op, node, run_before)

    async def _cycle_or(self, done: asyncio.Future[str | None]) -> None:
        cycled: asyncio.Future[None] = asyncio.ensure_future(self.host.cycled())
        waiting: set[asyncio.Future[Any]] = {cycled, done}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cycled.cancel()

    def granted(self, node: str) -> None:
        """The planner granted the stop and the executor took the action (called by the loop)."""
        op_id = self.requested.pop(node, None)
        op = self.kept.get(op_id or "")
        if op is not None:
            op.step(f"{node}: disruption slot granted")

    def step(self, node: str, text: str) -> None:
        """A step of the executor's restart action."""
        op = self.running_on(node)
        if op is not None:
            op.step(f"{node}: {text}")

    def finished(self, node: str, error: str | None) -> None:
        """The executor's restart action ended (None: the container runs again)."""
        done = self._done.get(node)
        if done is not None and not done.done():
            running = self.running_on(node)
            if (
                running is not None
                and error is not None
                and error.startswith("waiting for disruption budget")
            ):
                self.requested[node] = running.id  # the store refused the slot: ask the planner again
                return
            done.set_result(error)

    def _view(self, node: str) -> Any:
        plan = self.host.current_plan
        return plan.views.get(node) if plan else None

    def _run_key(self, node: str) -> str | None:
        plan = self.host.current_plan
        record = plan.records.get(node) if plan else None
        return record.run_key if record else None

    async def until_healthy(self, op: Operation, node: str, run_before: str | None) -> None:
        """A new run of the node, healthy within start_timeout; for CeresDB then its shards: as long
        as the lease judgement says it is only waiting (`reopening`, at the version's pace), this
        waits; `lease_lost` or another failing state ends the operation."""
        desired = self.host.current_desired
        policy = desired.spec.supervisor
        target = desired.node(node)
        assert target is not None
        op.step(f"{node}: waiting until healthy (start_timeout {policy.start_timeout:g}s)")
        deadline = time.monotonic() + policy.start_timeout
        while True:
            view = self._view(node)
            new_run = self._run_key(node) not in (None, run_before)
            if new_run and view is not None and view.state in (NodeState.HEALTHY, NodeState.REOPENING):
                break
            if time.monotonic() >= deadline:
                reason = f" ({view.state}: {view.reason})" if view is not None else ""
                raise OperationFailed(f"{node} not healthy within {policy.start_timeout:g}s{reason}")
            await self.host.cycled()
        if target.role == "meta":
            # A stopped leader revokes its leader key; its etcd dies with it, and the others take
            # a few seconds to elect: the next member waits until a leader holds the key again.
            op.step(f"{node}: healthy; waiting for a meta leader")
            while self.host.leader() is None:
                if time.monotonic() >= deadline:
                    why = f"no meta leader within {policy.start_timeout:g}s of {node}'s restart"
                    raise OperationFailed(why)
                await self.host.cycled()
            op.step(f"{node}: healthy, meta leader {self.host.leader()}")
            return
        op.step(f"{node}: healthy; waiting for its shards (CeresMeta {desired.spec.cluster.version}'s pace)")
        deadline = time.monotonic() + SHARDS_WAIT_CAP_S
        last = None
        while True:
            view = self._view(node)
            if view is not None and view.state is NodeState.HEALTHY and view.available:
                op.step(f"{node}: healthy with its shards")
                return
            if view is not None and view.state is NodeState.REOPENING and view.reason != last:
                op.step(f"{node}: {view.reason}")
                last = view.reason
            if time.monotonic() >= deadline or (view is not None and view.state in FAILING):
                why = f"{view.state}: {view.reason}" if view is not None else "not observed"
                raise OperationFailed(f"{node} did not get its shards back ({why})")
            await self.host.cycled()

    async def _remote_restart(self, op: Operation, node: str, agent: str, base: str) -> None:
        """Another machine's node: its own supervisor restarts it; this one follows."""
        session = self.session()
        if session is None:
            raise OperationFailed("no HTTP session")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        op.step(f"{node}: asking the supervisor on {agent} ({base})")
        try:
            async with session.post(
                f"{base}/v1/nodes/{node}/restart",
                json={"who": op.who, "via": f"{op.id} on {self.host.agent}"},
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=10),
            ) as response:
                answer = await response.json(content_type=None)
                if response.status != 202 or not isinstance(answer, dict):
                    raise OperationFailed(
                        f"{agent} refused to restart {node}: HTTP {response.status}: {answer}"
                    )
            remote_id = str(answer.get("operation"))
            seen = 0
            while True:
                await asyncio.sleep(REMOTE_POLL_S)  # following another machine's operation at its pace
                async with session.get(
                    f"{base}/v1/operations/{remote_id}",
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as response:
                    doc = await response.json(content_type=None)
                if not isinstance(doc, dict):
                    continue
                for step in (doc.get("steps") or [])[seen:]:
                    op.step(f"{agent}: {step.get('text')}")
                seen = len(doc.get("steps") or [])
                if doc.get("outcome") == "ok":
                    return
                if doc.get("outcome") is not None:
                    raise OperationFailed(f"{node} on {agent}: {doc.get('outcome')}: {doc.get('error')}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            raise OperationFailed(f"cannot follow {node} on {agent}: {err}") from None


class OperationFailed(Exception):
    """The operation stops here; the message says which node and why."""


@contextlib.contextmanager
def outcome_of(op: Operation, crashed: str) -> Iterator[None]:
    """Runs an operation's body and sets its outcome from how the body ended: `ok` (unless the body
    set one), `failed` with the reason, `cancelled` when the supervisor stops (re-raised), or an
    internal error, logged as `crashed`."""
    try:
        yield
        if op.outcome is None:
            op.outcome = "ok"
    except OperationFailed as err:
        op.outcome, op.error = "failed", str(err)
    except asyncio.CancelledError:
        op.outcome, op.error = "cancelled", "the supervisor is stopping"
        raise
    except Exception as err:
        log.exception(crashed, operation=op.id)
        op.outcome, op.error = "failed", f"internal error: {type(err).__name__}: {err}"
