"""Upgrades as a planned operation: a changed `cluster.version` is carried out step by step,
never as a side effect of a reload.

When the file names another release than the containers run, one agent cluster-wide drives the
upgrade: the holder of the store's `operation` key, which rolling restarts take too (one at a time).
Each step is asked of the agent that runs the node: this one through the planner's controls
(`Controls.upgrades`), another through its API (`POST /v1/nodes/<name>/upgrade`), as rolling
restarts go.

1. Preflight: every agent has said that its own Docker Engine has the file's images
   (`actions.images`). Until then nothing stops anywhere, and the operation says which machine
   lacks which image.
2. The steps of `decisions.upgrades.assess`, recomputed before each one from what the containers
   run, so that an agent restarted mid-way resumes where the containers stand. A rolling step
   recreates one node within the disruption budget (a CeresDB node flushed first) and waits until
   it is healthy and, for CeresDB, holds its shards again; an all-together step recreates its
   nodes at once and waits for every one (and for meta to be ready).
3. A paused node, agents on different files, a node nobody publishes: it waits, and says so.
4. A node not healthy within `start_timeout`: the upgrade halts there, nothing is rolled back; it
   says where, and how to go back (the version edited back: the same path). A halted upgrade
   keeps the `operation` key until the file changes, so that no agent starts it again meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import structlog

from ceres_supervisor.cluster import view as store
from ceres_supervisor.decisions import upgrades as decide
from ceres_supervisor.decisions.gate import down_reason
from ceres_supervisor.decisions.planning import Plan, UpgradeAsk
from ceres_supervisor.desired.containers import DesiredCluster
from ceres_supervisor.model.observed import Observation
from ceres_supervisor.model.versions import parse_release
from ceres_supervisor.operations import restarts
from ceres_supervisor.operations.restarts import Operation, OperationFailed, Refused
from ceres_supervisor.operations.upgrade_steps import REMOTE_POLL_S, Host, NodeSteps, Retry

log = structlog.get_logger(__name__)

CLAIM: Final = "operation"


@dataclass(frozen=True)
class Situation:
    """What the upgrade sees of the cluster after one cycle. Pure data, built by `situation`."""

    upgrade: decide.Upgrade
    spec_hash: str
    agent: str
    local: frozenset[str]
    """The nodes this agent runs."""
    coordinated: bool
    files_differ: str | None = None
    images: tuple[bool, str] = (False, "not checked yet")
    """(every machine has the file's images, what is awaited or missing)."""
    checks: Mapping[str, decide.Preflight | None] = field(default_factory=dict)
    paused: frozenset[str] = frozenset()
    all_paused: bool = False
    meta_ready: bool = False
    meta_detail: str = ""
    claim: Mapping[str, Any] | None = None
    """The store's `operation` key: who runs a rolling operation (an upgrade, a rolling restart)."""
    running: Mapping[str, str] = field(default_factory=dict)
    """node -> the release its container runs, "" when none or nobody can tell."""

    def is_paused(self, node: str) -> bool:
        return self.all_paused or node in self.paused


def situation(
    desired: DesiredCluster,
    observation: Observation,
    plan: Plan,
    agent: str,
    view: store.StoreView | None,
    preflight: decide.Preflight | None,
    files_differ: str | None,
    paused: tuple[frozenset[str], bool],
) -> Situation:
    """The upgrade's view of this cycle: each node's release (this agent's from its containers,
    another machine's as its agent publishes it) and whether it serves, the preflight of every
    agent, the pauses, the store's `operation` key. Pure."""
    local = frozenset(n.name for n in desired.nodes if n.is_local)
    members: list[decide.Member] = []
    running: dict[str, str] = {}
    for node in desired.nodes:
        if node.is_local:
            c = observation.containers.get(node.name)
            view_ = plan.views.get(node.name)
            release = parse_release(c.release) if c is not None else None
            running[node.name] = c.release if c is not None else ""
            down = view_ is None or down_reason(view_) is not None
            members.append(decide.Member(node.name, node.role, release, True, down))
            continue
        host = view.agent_of(node.name) if view is not None else None
        record = view.agents.get(host) if view is not None and host is not None else None
        if record is None:
            running[node.name] = ""  # nobody publishes it (its agent is down): unknown
            members.append(decide.Member(node.name, node.role, None, False, True))
            continue
        text = record.running.get(node.name, "")
        running[node.name] = text
        doc = view.nodes.get(node.name) if view is not None else None
        members.append(
            decide.Member(node.name, node.role, parse_release(text), True, store.down_reason(doc) is not None)
        )
    leader = observation.leader.member if observation.leader else None
    upgrade = decide.assess(desired.spec.release, members, leader)
    checks: dict[str, decide.Preflight | None] = {agent: preflight}
    if view is not None:
        for host, record in view.agents.items():
            if host != agent and record.nodes:
                checks[host] = decide.Preflight.parse(record.preflight)
    coordinated = any(not n.is_local for n in desired.nodes)
    return Situation(
        upgrade,
        desired.spec_hash,
        agent,
        local,
        coordinated,
        files_differ,
        decide.images_confirmed(desired.spec_hash, checks),
        checks,
        paused[0],
        paused[1],
        plan.meta_ready,
        plan.meta_detail,
        (view.claims.get(CLAIM) if view is not None else None),
        running,
    )


class Upgrades:
    def __init__(
        self,
        host: Host,
        operations: restarts.Operations,
        session: Callable[[], aiohttp.ClientSession | None],
        token: str | None,
    ) -> None:
        self.host = host
        self.operations = operations
        self.last: Situation | None = None
        self.nodes = NodeSteps(host, operations, session, token, self._at_target)
        """One node's step, here or on another machine (and the asks the planner grants)."""
        self.current: Operation | None = None
        """The upgrade this agent drives (running, or halted and holding the `operation` key)."""
        self.halted: tuple[str, str] | None = None
        """(the file's spec hash, why) of the upgrade halted here: not started again for that file."""
        self._starting = False
        self._target = ""

    # -- from the loop: no I/O ---------------------------------------------------------------------

    def observe(self, sit: Situation) -> None:
        """Each cycle: what the cluster looks like now; starts the upgrade when one is due here."""
        self.last = sit
        if self.halted is not None and self.halted[0] != sit.spec_hash:
            self.halted = None  # the file changed (the version edited back, say): a new upgrade
            if self.current is not None and self.current.claimed:
                self.current.claimed = False
                self.host.spawn(self.host.release_operation(), "upgrade-release")
        if self._should_start(sit):
            self._starting = True
            self.host.spawn(self._start(sit), "upgrade")

    def _should_start(self, sit: Situation) -> bool:
        up = sit.upgrade
        if not up.pending or up.refused or self._starting or self.halted is not None:
            return False
        if self.current is not None and self.current.outcome is None:
            return False
        if any(op.outcome is None and op.kind == "rolling-restart" for op in self.operations.kept.values()):
            return False
        if sit.coordinated and sit.claim is not None:
            return False  # another agent (or this one, a moment ago) runs a rolling operation
        return not (sit.coordinated and sit.files_differ is not None)

    def controls(self) -> tuple[Mapping[str, UpgradeAsk], str]:
        """(the asks, what a node of another release waits for)."""
        return dict(self.nodes.asks), self.note()

    def _at_target(self, node: str) -> bool:
        sit = self.last
        release = parse_release(sit.running.get(node, "")) if sit else None
        return sit is not None and release is not None and release.same_servers(sit.upgrade.target)

    async def begin_node(self, node: str, together: bool, who: str, spec_hash: str) -> Operation:
        """Another agent's upgrade asks for this agent's `node` (`POST /v1/nodes/<name>/upgrade`)."""
        return await self.nodes.begin_node(node, together, who, spec_hash)

    def note(self) -> str:
        sit = self.last
        if sit is None:
            return "the upgrade waits for the first look at the cluster"
        up = sit.upgrade
        if not up.pending:
            return "no upgrade pending"
        if up.refused:
            return f"upgrade refused: {up.refused}"
        if self.halted is not None:
            return f"upgrade halted: {self.halted[1]}"
        claim = sit.claim
        if self.current is not None and self.current.outcome is None:
            return f"upgrade {self.current.id} to {up.target.label()}: waits its turn"
        if claim is not None and claim.get("host") != sit.agent:
            what = f"{claim.get('kind', 'operation')} {claim.get('id', '')}"
            state = " halted" if claim.get("state") == "halted" else ""
            return f"{what}{state} on {claim.get('host')}" + (
                f": {claim.get('error')}" if claim.get("error") else ""
            )
        if sit.files_differ is not None:
            return f"the upgrade waits until every agent runs the same file ({sit.files_differ})"
        if not sit.images[0]:
            return f"the upgrade waits: {sit.images[1]}"
        return f"the upgrade to {up.target.label()} is about to start"

    # -- the document ---------------------------------------------------------------------------------

    def document(self) -> dict[str, Any]:
        """`GET /v1/upgrade`: the upgrade this agent sees, whoever drives it."""
        sit = self.last
        if sit is None:
            return {"upgrade": None, "detail": "not observed yet"}
        up = sit.upgrade
        op = self.current
        claim = dict(sit.claim) if sit.claim is not None else None
        if up.refused:
            state = "refused"
        elif self.halted is not None or (claim is not None and claim.get("state") == "halted"):
            state = "halted"
        elif not up.pending:
            state = "done" if op is not None and op.outcome == "ok" else "none"
        elif (op is not None and op.outcome is None) or (
            claim is not None and claim.get("kind") == "upgrade"
        ):
            state = "running"
        else:
            state = "waiting"
        halted = self.halted[1] if self.halted else (claim or {}).get("error") if state == "halted" else None
        return {
            "upgrade": {
                "state": state,
                "target": up.target.label(),
                "from": [s.label() for s in up.sources],
                "pending": up.pending,
                "nodes": [
                    {"name": name, "release": release or None, "done": name in up.done}
                    for name, release in sit.running.items()
                ],
                "done": list(up.done),
                "unknown": list(up.unknown),
                "steps": [
                    {"role": s.role, "nodes": list(s.nodes), "together": s.together, "why": s.why}
                    for s in up.steps
                ],
                "meta_downtime": up.meta_downtime or None,
                "refused": up.refused,
                "halted": halted,
                "going_back": decide.going_back(up) or None if state == "halted" else None,
                "preflight": {
                    "ok": sit.images[0],
                    "detail": sit.images[1],
                    "agents": {host: c.document() if c else None for host, c in sit.checks.items()},
                },
                "operation": op.document() if op is not None else None,
                "claim": claim,
                "note": self.note(),
            }
        }

    # -- the operation ---------------------------------------------------------------------------------

    async def _start(self, sit: Situation) -> None:
        up = sit.upgrade
        nodes = [n for s in up.steps for n in s.nodes]
        op = Operation(self.operations.new_id(), "upgrade", "the file", nodes)
        try:
            doc = {
                "kind": "upgrade",
                "id": op.id,
                "who": op.who,
                "target": up.target.label(),
                "spec_hash": sit.spec_hash,
                "state": "running",
            }
            try:
                holder = await self.host.claim_operation(doc)
            except Refused as err:
                log.info("upgrade_waits", detail=str(err))
                return
            if holder is not None:
                return
            op.claimed = True
            self.current, self._target = op, sit.spec_hash
            self.operations.keep(op)
        finally:
            self._starting = False
        sources = ", ".join(s.label() for s in up.sources)
        op.step(f"upgrade {sources} -> {up.target.label()}: {', '.join(nodes)} to go")
        op.step(f"meta downtime: {up.meta_downtime}")
        self.host.record_event(None, "operation_started", op.who, f"upgrade {op.id} to {up.target.label()}")
        log.info("upgrade_started", operation=op.id, target=up.target.label(), sources=sources)
        await self._run(op)

    async def _run(self, op: Operation) -> None:
        halt: str | None = None
        try:
            await self._drive(op)
        except OperationFailed as err:
            halt = str(err)
        except asyncio.CancelledError:
            op.outcome, op.error = "cancelled", "the supervisor is stopping"
            raise
        except Exception as err:
            log.exception("upgrade_crashed", operation=op.id)
            halt = f"internal error: {type(err).__name__}: {err}"
        finally:
            if halt is not None:
                back = decide.going_back(self.last.upgrade) if self.last else ""
                op.outcome, op.error = "halted", halt + (f"; {back}" if back else "")
                self.halted = (self._target, op.error)
                op.step(f"halted: {op.error}")
                if op.claimed:
                    try:
                        await self.host.update_operation(
                            {
                                "kind": "upgrade",
                                "id": op.id,
                                "who": op.who,
                                "state": "halted",
                                "error": op.error,
                            }
                        )
                    except Refused as err:
                        log.warning("upgrade_halt_not_published", error=str(err))
            elif op.claimed:
                op.claimed = False
                await self.host.release_operation()
            if halt is None and op.outcome is None:
                op.outcome = "ok"
            if halt is None:
                op.step(f"done: {op.outcome}" + (f" ({op.error})" if op.error else ""))
            self.host.record_event(
                op.current, "operation_done", op.outcome, f"upgrade {op.id}: {op.error or 'ok'}"
            )
            log.info("upgrade_done", operation=op.id, outcome=op.outcome, error=op.error)

    async def _drive(self, op: Operation) -> None:
        """Step after step until no container runs another release (see the module docstring)."""
        waited, begun = "", ""
        while True:
            sit = self.last
            assert sit is not None
            if sit.spec_hash != self._target:
                op.outcome, op.error = "superseded", "the file changed: the upgrade starts again from there"
                return
            up = sit.upgrade
            if up.refused:
                raise OperationFailed(f"refused: {up.refused}")
            if not up.pending:
                return
            if op.cancel:
                raise OperationFailed("stopped on request before " + ", ".join(up.steps[0].nodes))
            why = self._why_wait(sit)
            if why is not None:
                if why != waited:
                    op.step(why)
                    waited = why
                await self.host.cycled()
                continue
            waited = ""
            step = up.steps[0]
            op.current = step.nodes[0]
            if step.describe() != begun:
                op.step(f"step: {step.describe()}")
                begun = step.describe()
            try:
                await self._step(op, step, sit)
            except Retry as err:
                op.step(f"{err}; trying again")
                await asyncio.sleep(REMOTE_POLL_S)  # another agent's pace: not every cycle
                await self.host.cycled()

    def _why_wait(self, sit: Situation) -> str | None:
        up = sit.upgrade
        if sit.files_differ is not None:
            return f"waiting until every agent runs the same file ({sit.files_differ})"
        if up.unknown:
            return f"waiting: nobody publishes {', '.join(up.unknown)} (its supervisor is down)"
        if not sit.images[0]:
            return f"preflight: {sit.images[1]}; nothing is stopped until every machine has the images"
        step = up.steps[0]
        paused = [n for n in step.nodes if sit.is_paused(n)]
        if paused:
            return f"waiting: {', '.join(paused)} paused (resume to go on)"
        return None

    async def _step(self, op: Operation, step: decide.Step, sit: Situation) -> None:
        target = sit.upgrade.target.label()
        runs = [
            self.nodes.local(op, node, step.together, target)
            if node in sit.local
            else self.nodes.remote(op, node, step.together, sit.spec_hash)
            for node in step.nodes
        ]
        results = await asyncio.gather(*runs, return_exceptions=True)
        problems = [r for r in results if isinstance(r, BaseException)]
        for problem in problems:
            if not isinstance(problem, OperationFailed | Retry):
                raise problem
        failed = [str(p) for p in problems if isinstance(p, OperationFailed)]
        if failed:
            raise OperationFailed("; ".join(failed))
        if problems:
            raise problems[0]
        if step.role == "meta":
            await self._meta_ready(op)

    async def _meta_ready(self, op: Operation) -> None:
        timeout_s = self.host.current_desired.spec.supervisor.start_timeout
        deadline = time.monotonic() + timeout_s
        while self.last is None or not self.last.meta_ready:
            if time.monotonic() >= deadline:
                detail = self.last.meta_detail if self.last else "not observed"
                raise OperationFailed(f"meta not ready within {timeout_s:g}s ({detail})")
            await self.host.cycled()
        op.step("meta ready")
