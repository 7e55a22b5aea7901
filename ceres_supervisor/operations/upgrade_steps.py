"""One node's step of an upgrade: asked of the planner here, or of the agent that runs it elsewhere.

Here: the step is an ask (`Controls.upgrades`) that the planner grants within the disruption budget
(or at once for an all-together step); the executor flushes a CeresDB node, stops, removes and
creates its container anew (`granted`, `step`, `finished` are told by the loop), and the step then
waits until the node is healthy within `start_timeout` and, for CeresDB, holds its shards again
(`restarts.Operations.until_healthy`, at the version's reopen pace). Elsewhere: `POST
/v1/nodes/<name>/upgrade` to the agent running it, whose own step (`begin_node`) this one follows
through `GET /v1/operations/<id>`, as rolling restarts do. A failure of the step is OperationFailed
(the upgrade halts); another agent out of reach is Retry (tried again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

import aiohttp
import structlog

from ceres_supervisor.decisions.planning import Plan, UpgradeAsk
from ceres_supervisor.operations import restarts
from ceres_supervisor.operations.restarts import Operation, OperationFailed, Refused

log = structlog.get_logger(__name__)

REMOTE_POLL_S: Final = 1.0


class Retry(Exception):
    """The step cannot go now for a passing reason (another agent out of reach): tried again."""


class Host(restarts.Host, Protocol):
    """What the upgrade needs of the daemon, besides what an operation needs."""

    def spawn(self, coro: Awaitable[None], name: str) -> None: ...
    async def update_operation(self, doc: dict[str, Any]) -> None:
        """Rewrite the store's `operation` key this agent holds (a halted upgrade says so there)."""


class NodeSteps:
    def __init__(
        self,
        host: Host,
        operations: restarts.Operations,
        session: Callable[[], aiohttp.ClientSession | None],
        token: str | None,
        at_target: Callable[[str], bool],
    ) -> None:
        self.host = host
        self.operations = operations
        self.session = session
        self.token = token
        self.at_target = at_target
        """Whether a node's container runs the upgrade's target already (from the last cycle)."""
        self.asks: dict[str, UpgradeAsk] = {}
        """node -> the ask the planner should grant (`Controls.upgrades`)."""
        self._asking: dict[str, Operation] = {}
        self._done: dict[str, asyncio.Future[str | None]] = {}

    # -- told by the loop: no I/O ----------------------------------------------------------------------

    def granted(self, node: str) -> None:
        """The planner granted the recreate and the executor took it."""
        if self.asks.pop(node, None) is not None:
            op = self._asking.get(node)
            if op is not None:
                op.step(f"{node}: recreate granted")

    def step(self, node: str, text: str) -> None:
        op = self._asking.get(node)
        if op is not None:
            op.step(f"{node}: {text}")

    def finished(self, node: str, error: str | None) -> None:
        """The executor's recreate ended (None: the new container runs)."""
        done = self._done.get(node)
        if done is None or done.done():
            return
        op = self._asking.get(node)
        if error is not None and error.startswith("waiting for disruption budget") and op is not None:
            self.asks[node] = UpgradeAsk(f"upgrade {op.id}")  # the store refused the slot: ask again
            return
        done.set_result(error)

    # -- one node here ----------------------------------------------------------------------------------

    def _plan(self) -> Plan | None:
        return self.host.current_plan

    def _run_key(self, node: str) -> str | None:
        plan = self._plan()
        record = plan.records.get(node) if plan else None
        return record.run_key if record else None

    async def local(self, op: Operation, node: str, together: bool, target: str) -> None:
        """Ask the planner to recreate `node` here, then wait until it is healthy (with its shards)."""
        if self.at_target(node):
            op.step(f"{node}: runs {target} already")
            return
        done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._done[node], self._asking[node] = done, op
        self.asks[node] = UpgradeAsk(f"upgrade {op.id}", together)
        run_before = self._run_key(node)
        op.step(
            f"{node}: recreate asked" + (" (all together)" if together else ", within the disruption budget")
        )
        last = None
        try:
            while node in self.asks and not self.at_target(node):
                await self._cycle_or(done)
                plan = self._plan()
                view = plan.views.get(node) if plan else None
                reason = view.reason if view is not None else None
                if reason and reason != last and ("waiting" in reason or "paused" in reason):
                    op.step(f"{node}: {reason.split('; ')[-1]}")
                    last = reason
            # Granted (the executor's answer follows), or at the target already some other way.
            error = await done if node not in self.asks else None
        finally:
            self.asks.pop(node, None)
            self._done.pop(node, None)
        if error is not None:
            raise OperationFailed(f"{node}: {error}")
        self.host.record_event(node, "upgraded", op.who, f"recreated at {target} by {op.id}")
        try:
            await self.operations.until_healthy(op, node, run_before)
        finally:
            self._asking.pop(node, None)

    async def _cycle_or(self, done: asyncio.Future[str | None]) -> None:
        cycled: asyncio.Future[None] = asyncio.ensure_future(self.host.cycled())
        waiting: set[asyncio.Future[Any]] = {cycled, done}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cycled.cancel()

    async def begin_node(self, node: str, together: bool, who: str, spec_hash: str) -> Operation:
        """Another agent's upgrade asks for this agent's `node` (`POST /v1/nodes/<name>/upgrade`)."""
        desired = self.host.current_desired
        target = desired.node(node)
        if target is None or not target.is_local:
            raise Refused(f"{node} does not run on this machine")
        if spec_hash != desired.spec_hash:
            raise Refused(f"this agent runs another file ({desired.spec_hash}, asked for {spec_hash})")
        running = next(
            (
                op
                for op in self.operations.kept.values()
                if op.kind == "upgrade-node" and op.outcome is None and op.nodes == [node]
            ),
            None,
        )
        if running is not None:
            return running  # the driver asks again (it restarted): follow the same one
        op = Operation(self.operations.new_id(), "upgrade-node", who, [node])
        op.current = node
        self.operations.keep(op)
        self.host.spawn(self._node_op(op, node, together), f"operation-{op.id}")
        return op

    async def _node_op(self, op: Operation, node: str, together: bool) -> None:
        try:
            with restarts.outcome_of(op, "upgrade_node_crashed"):
                await self.local(op, node, together, "the file's release")
        finally:
            op.step(f"done: {op.outcome}" + (f" ({op.error})" if op.error else ""))

    # -- one node on another machine -----------------------------------------------------------------

    async def remote(self, op: Operation, node: str, together: bool, spec_hash: str) -> None:
        """Another machine's node: its own supervisor recreates it; this one follows."""
        if self.at_target(node):
            op.step(f"{node}: runs the target already")
            return
        remote = self.host.remote_agent(node)
        session = self.session()
        if remote is None or session is None:
            raise Retry(f"{node}: its supervisor cannot be reached now")
        agent, base = remote
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        body = {
            "who": "api",
            "via": f"{op.id} on {self.host.agent}",
            "together": together,
            "spec_hash": spec_hash,
        }
        op.step(f"{node}: asking the supervisor on {agent} ({base})")
        try:
            async with session.post(
                f"{base}/v1/nodes/{node}/upgrade",
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=10),
            ) as response:
                answer = await response.json(content_type=None)
            if response.status == 409:
                said = answer.get("error") if isinstance(answer, dict) else answer
                raise Retry(f"{agent} cannot take {node} now: {said}")
            if response.status != 202 or not isinstance(answer, dict):
                raise OperationFailed(f"{agent} refused to upgrade {node}: HTTP {response.status}: {answer}")
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
                if response.status == 404:
                    raise Retry(f"{agent} no longer knows operation {remote_id} (restarted?)")
                if not isinstance(doc, dict):
                    continue
                steps = doc.get("steps") or []
                for item in steps[seen:]:
                    op.step(f"{agent}: {item.get('text')}")
                seen = len(steps)
                if doc.get("outcome") == "ok":
                    return
                if doc.get("outcome") is not None:
                    raise OperationFailed(f"{node} on {agent}: {doc.get('error')}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            raise Retry(f"cannot follow {node} on {agent}: {err}") from None
