"""The upgrade operation (operations.upgrades) against a small fake of the daemon that speaks its
Host protocol: each simulated cycle the planner grants the asks (a recreate), a recreated node
starts, then turns healthy with its shards (or never, when it is told to fail). No Docker, no
store; the operation itself is the real one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ceres_supervisor.decisions import upgrades as decide
from ceres_supervisor.decisions.planning import ClusterState, NodeRecord, NodeState, NodeView, Plan
from ceres_supervisor.desired import containers, loading
from ceres_supervisor.model.versions import parse_release
from ceres_supervisor.operations import restarts, upgrade_steps, upgrades

from .conftest import BASE

FILE = (
    BASE.replace("[cluster]\n", '[cluster]\nversion = "1.2.5"\n')
    + '\n[supervisor]\nstart_timeout = "300ms"\n'
)
TARGET = "ceresdb 1.2.5"
OLD = "ceresdb 1.2.4"
IMAGES_OK = (True, "every machine has the images")


@dataclass
class Fake:
    """The daemon as the upgrade sees it, one simulated cycle at a time."""

    desired: containers.DesiredCluster
    running: dict[str, str]
    failing: set[tuple[str, str]] = field(default_factory=set)
    """(node, release): the node never turns healthy while it runs that release."""
    images: tuple[bool, str] = IMAGES_OK
    paused: frozenset[str] = frozenset()
    claim: Mapping[str, Any] | None = None
    coordinated: bool = False
    spec_hash: str = "h1"
    agent: str = "127.0.0.1"
    current_plan: Plan | None = None
    events: list[tuple[str | None, str, str]] = field(default_factory=list)
    claims: list[Mapping[str, Any]] = field(default_factory=list)
    released: int = 0
    recreated: list[str] = field(default_factory=list)
    runs: dict[str, int] = field(default_factory=dict)
    starting: dict[str, int] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    cycle_done: asyncio.Event = field(default_factory=asyncio.Event)
    upgrades: upgrades.Upgrades | None = None

    # -- the Host protocol ---------------------------------------------------------------------------
    @property
    def current_desired(self) -> containers.DesiredCluster:
        return self.desired

    def leader(self) -> str | None:
        return "meta0"

    remotes: dict[str, tuple[str, str]] = field(default_factory=dict)
    """node -> (agent, its API's base URL): a node that another machine's supervisor runs."""

    def remote_agent(self, node: str) -> tuple[str, str] | None:
        return self.remotes.get(node)

    async def cycled(self) -> None:
        event = self.cycle_done
        await event.wait()

    async def claim_operation(self, doc: Mapping[str, Any]) -> str | None:
        self.claims.append(doc)
        return None

    async def release_operation(self) -> None:
        self.released += 1

    async def update_operation(self, doc: Mapping[str, Any]) -> None:
        self.claims.append(doc)

    def record_event(self, node: str | None, type_: str, reason: str | None, message: str) -> None:
        self.events.append((node, type_, message))

    def count_planned(self, node: str) -> None:
        pass

    def spawn(self, coro: Awaitable[None], name: str) -> None:
        self.tasks.append(asyncio.ensure_future(coro))  # type: ignore[arg-type]

    # -- one simulated cycle: plan, grant the asks, observe -----------------------------------------------

    async def cycle(self) -> None:
        assert self.upgrades is not None
        asks, _note = self.upgrades.controls()
        for node, starting in list(self.starting.items()):
            if starting <= 0 and (node, self.running[node]) not in self.failing:
                self.starting.pop(node)
            else:
                self.starting[node] = starting - 1
        for node in asks:
            if node in self.paused:
                continue  # the planner never touches a paused node
            self.upgrades.nodes.granted(node)
            self.upgrades.nodes.finished(node, None)
            self.recreated.append(node)
            self.running[node] = self.desired.spec.release.label()
            self.runs[node] = self.runs.get(node, 0) + 1
            self.starting[node] = 1
        views = {}
        records = {}
        for n in self.desired.nodes:
            up = n.name not in self.starting
            state = NodeState.HEALTHY if up else NodeState.STARTING
            views[n.name] = NodeView(state, None if up else "starting", available=up)
            records[n.name] = NodeRecord(run_key=f"{n.name}@{self.runs.get(n.name, 0)}")
        self.current_plan = Plan((), records, views, True, "meta ready", ClusterState.HEALTHY, None)
        members = [
            decide.Member(n.name, n.role, parse_release(self.running[n.name]), True, n.name in self.starting)
            for n in self.desired.nodes
        ]
        upgrade = decide.assess(self.desired.spec.release, members, "meta0")
        local = frozenset(n.name for n in self.desired.nodes)
        self.upgrades.observe(
            upgrades.Situation(
                upgrade,
                self.spec_hash,
                self.agent,
                local,
                self.coordinated,
                None,
                self.images,
                {},
                self.paused,
                False,
                True,
                "meta ready",
                self.claim,
                dict(self.running),
            )
        )
        event, self.cycle_done = self.cycle_done, asyncio.Event()
        event.set()
        for _ in range(5):  # let the operation run up to its next wait
            await asyncio.sleep(0)

    async def until(self, predicate: Callable[[], object], what: str, cycles: int = 400) -> None:
        for _ in range(cycles):
            if predicate():
                return
            await self.cycle()
            await asyncio.sleep(0.005)  # the simulated cycle's length (start_timeout is 300 ms)
        raise AssertionError(f"not after {cycles} cycles: {what}; steps: {self.steps()}")

    def steps(self) -> list[str]:
        op = self.upgrades.current if self.upgrades else None
        return [text for _at, text in op.steps] if op else []

    def outcome(self) -> str | None:
        op = self.upgrades.current if self.upgrades else None
        return op.outcome if op else None


@pytest.fixture
async def fake(tmp_path: Path) -> Any:
    path = tmp_path / "c.toml"
    path.write_text(FILE)
    desired = containers.build(loading.load(path).spec, lambda _ref: "", is_local=lambda _host: True)
    made = Fake(desired, dict.fromkeys(["meta0", "db0", "db1"], OLD))
    made.upgrades = upgrades.Upgrades(made, restarts.Operations(made, lambda: None, None), lambda: None, None)
    yield made
    for task in made.tasks:
        task.cancel()
    await asyncio.gather(*made.tasks, return_exceptions=True)


async def test_nothing_is_asked_until_every_machine_has_the_images_then_step_by_step(fake: Fake) -> None:
    fake.images = (False, "127.0.0.2 lacks ceres-emulator/ceresdb-server:1.2.5")
    for _ in range(20):
        await fake.cycle()
    assert fake.recreated == [] and fake.outcome() is None
    assert any("preflight: 127.0.0.2 lacks" in s and "nothing is stopped" in s for s in fake.steps())
    fake.images = IMAGES_OK
    await fake.until(lambda: fake.outcome() == "ok", "the upgrade done")
    assert fake.recreated == ["meta0", "db0", "db1"]
    assert fake.released == 1 and [c.get("kind") for c in fake.claims] == ["upgrade"]


async def test_a_node_not_healthy_in_start_timeout_halts_it_there_until_the_file_changes(fake: Fake) -> None:
    fake.failing = {("db0", TARGET)}  # db0 does not work at 1.2.5
    await fake.until(lambda: fake.outcome() == "halted", "the upgrade halted")
    assert fake.recreated == ["meta0", "db0"], "nothing after the node that failed, nothing rolled back"
    op = fake.upgrades.current if fake.upgrades else None
    assert op is not None and op.error is not None
    assert op.error.startswith("db0 not healthy within 0.3s")
    assert "to go back, set cluster.version back to ceresdb 1.2.4" in op.error
    assert fake.released == 0 and fake.claims[-1]["state"] == "halted", "the halt keeps the operation key"
    for _ in range(10):
        await fake.cycle()
    assert fake.recreated == ["meta0", "db0"] and fake.upgrades.current is op, "not started again"
    doc = fake.upgrades.document()["upgrade"]
    assert doc["state"] == "halted" and doc["going_back"].startswith("to go back")
    # The version edited back: a new file, a new upgrade on the same path (meta first: its budget counts
    # only meta members, so db0 being down holds nothing back).
    fake.spec_hash = "h2"
    fake.desired = containers.build(
        fake.desired.spec.model_copy(
            update={"cluster": fake.desired.spec.cluster.model_copy(update={"version": "1.2.4"})}
        ),
        lambda _ref: "",
        is_local=lambda _host: True,
    )
    await fake.until(lambda: fake.upgrades.current is not op and fake.outcome() == "ok", "going back done")
    assert fake.released == 2, "the halted upgrade's key given back, then the new one's"
    assert [c.get("state") for c in fake.claims] == ["running", "halted", "running"]
    assert fake.recreated[2:] == ["meta0", "db0"], fake.recreated
    assert fake.running == dict.fromkeys(["meta0", "db0", "db1"], OLD)


async def test_a_paused_node_is_waited_for(fake: Fake) -> None:
    fake.paused = frozenset({"db0"})
    await fake.until(lambda: any("db0 paused" in s for s in fake.steps()), "the upgrade waiting for db0")
    for _ in range(10):
        await fake.cycle()
    assert fake.recreated == ["meta0"]
    fake.paused = frozenset()
    await fake.until(lambda: fake.outcome() == "ok", "the upgrade done once db0 is resumed")
    assert fake.recreated == ["meta0", "db0", "db1"]


async def test_another_agent_s_operation_holds_it_back(fake: Fake) -> None:
    fake.coordinated, fake.claim = True, {"kind": "rolling-restart", "id": "op-9", "host": "127.0.0.2"}
    for _ in range(10):
        await fake.cycle()
    assert fake.recreated == [] and fake.upgrades is not None and fake.upgrades.current is None
    assert fake.upgrades.note() == "rolling-restart op-9 on 127.0.0.2"
    fake.claim = None
    await fake.until(lambda: fake.outcome() == "ok", "the upgrade done once the other operation ended")


async def test_a_refused_pair_is_never_started(fake: Fake) -> None:
    fake.running = dict.fromkeys(fake.running, "horaedb 2.0.0")
    for _ in range(10):
        await fake.cycle()
    assert fake.recreated == [] and fake.upgrades is not None and fake.upgrades.current is None
    assert fake.upgrades.note().startswith("upgrade refused: horaedb 2.0.0 -> ceresdb 1.2.5: no way back")
    assert fake.upgrades.document()["upgrade"]["state"] == "refused"


# --- one node's step on another machine: followed through that agent's API -------------------------


class OtherAgent:
    """Another machine's supervisor as its API answers an upgrade step: the answer to the ask, then
    the operation's document, one more step each time it is read, then its outcome."""

    def __init__(self, ask_status: int = 202, outcome: str = "ok", error: str | None = None) -> None:
        self.ask_status, self.outcome, self.error = ask_status, outcome, error
        self.asked: list[dict[str, Any]] = []
        self.reads = 0
        self.forget = False
        app = web.Application()
        app.router.add_post("/v1/nodes/{node}/upgrade", self.ask)
        app.router.add_get("/v1/operations/{id}", self.follow)
        self.server = TestServer(app, host="127.0.0.1")

    async def ask(self, request: web.Request) -> web.Response:
        self.asked.append({"node": request.match_info["node"], **await request.json()})
        if self.ask_status != 202:
            return web.json_response({"error": "an operation runs here"}, status=self.ask_status)
        return web.json_response({"operation": "op-7"}, status=202)

    async def follow(self, request: web.Request) -> web.Response:
        if self.forget:
            return web.json_response({"error": "no such operation"}, status=404)
        self.reads += 1
        steps = [{"text": f"step {i}"} for i in range(min(self.reads, 3))]
        done = self.reads >= 3
        return web.json_response(
            {"id": "op-7", "steps": steps, "outcome": self.outcome if done else None, "error": self.error}
        )


@pytest.fixture
async def remote(fake: Fake, monkeypatch: pytest.MonkeyPatch) -> Any:
    """db1 runs on 127.0.0.2, whose agent `OtherAgent` plays; the steps read it every 10 ms."""
    monkeypatch.setattr(upgrade_steps, "REMOTE_POLL_S", 0.01)
    other = OtherAgent()
    await other.server.start_server()
    fake.remotes["db1"] = ("127.0.0.2", str(other.server.make_url("")).rstrip("/"))
    async with aiohttp.ClientSession() as session:
        assert fake.upgrades is not None
        fake.upgrades.nodes.session = lambda: session
        yield other
    await other.server.close()


def node_op(node: str = "db1") -> restarts.Operation:
    return restarts.Operation("op-1", "upgrade", "api", [node])


async def test_a_step_on_another_machine_is_asked_of_its_agent_and_followed_to_its_end(
    fake: Fake, remote: OtherAgent
) -> None:
    assert fake.upgrades is not None
    op = node_op()
    await fake.upgrades.nodes.remote(op, "db1", False, "h1")
    assert remote.asked == [
        {"node": "db1", "who": "api", "via": "op-1 on 127.0.0.1", "together": False, "spec_hash": "h1"}
    ]
    texts = [text for _at, text in op.steps]
    assert texts[-3:] == ["127.0.0.2: step 0", "127.0.0.2: step 1", "127.0.0.2: step 2"], texts


async def test_a_failed_step_on_another_machine_fails_the_upgrade_with_its_error(
    fake: Fake, remote: OtherAgent
) -> None:
    assert fake.upgrades is not None
    remote.outcome, remote.error = "failed", "db1 not healthy within 5s"
    with pytest.raises(restarts.OperationFailed, match=r"db1 on 127.0.0.2: db1 not healthy within 5s"):
        await fake.upgrades.nodes.remote(node_op(), "db1", False, "h1")


@pytest.mark.parametrize(
    ("status", "raised", "said"),
    [
        (409, upgrade_steps.Retry, "127.0.0.2 cannot take db1 now: an operation runs here"),
        (400, restarts.OperationFailed, "127.0.0.2 refused to upgrade db1: HTTP 400"),
    ],
)
async def test_an_ask_another_agent_refuses_is_tried_again_only_when_it_is_busy(
    fake: Fake, remote: OtherAgent, status: int, raised: type[Exception], said: str
) -> None:
    assert fake.upgrades is not None
    remote.ask_status = status
    with pytest.raises(raised, match=said):
        await fake.upgrades.nodes.remote(node_op(), "db1", False, "h1")


async def test_an_agent_that_forgot_the_step_or_cannot_be_reached_is_tried_again(
    fake: Fake, remote: OtherAgent
) -> None:
    assert fake.upgrades is not None
    remote.forget = True  # restarted meanwhile: it no longer knows the operation
    with pytest.raises(upgrade_steps.Retry, match="no longer knows operation op-7"):
        await fake.upgrades.nodes.remote(node_op(), "db1", False, "h1")
    await remote.server.close()
    with pytest.raises(upgrade_steps.Retry, match=r"cannot follow db1 on 127\.0\.0\.2"):
        await fake.upgrades.nodes.remote(node_op(), "db1", False, "h1")
    fake.remotes.clear()  # no agent publishes where db1 runs
    with pytest.raises(upgrade_steps.Retry, match="its supervisor cannot be reached now"):
        await fake.upgrades.nodes.remote(node_op(), "db1", False, "h1")


async def test_a_node_at_the_target_already_is_not_asked_of_anyone(fake: Fake, remote: OtherAgent) -> None:
    assert fake.upgrades is not None
    fake.running["db1"] = TARGET
    await fake.cycle()
    op = node_op()
    await fake.upgrades.nodes.remote(op, "db1", False, "h1")
    assert remote.asked == [] and op.steps[-1][1] == "db1: runs the target already"


# --- a step asked of this agent by another one (POST /v1/nodes/<name>/upgrade) ------------------------

DRIVEN_ELSEWHERE = {"kind": "upgrade", "id": "op-1", "host": "127.0.0.2"}
"""The `operation` key: the upgrade is driven by the agent on 127.0.0.2 (none starts here)."""


async def test_a_step_asked_by_another_agent_runs_here_once_and_is_refused_for_another_file(
    fake: Fake,
) -> None:
    assert fake.upgrades is not None
    fake.coordinated, fake.claim = True, DRIVEN_ELSEWHERE
    steps = fake.upgrades.nodes
    with pytest.raises(restarts.Refused, match="this agent runs another file"):
        await steps.begin_node("db0", False, "op-1 on 127.0.0.2", "h9")
    with pytest.raises(restarts.Refused, match="db9 does not run on this machine"):
        await steps.begin_node("db9", False, "op-1 on 127.0.0.2", fake.desired.spec_hash)
    op = await steps.begin_node("db0", False, "op-1 on 127.0.0.2", fake.desired.spec_hash)
    again = await steps.begin_node("db0", False, "op-1 on 127.0.0.2", fake.desired.spec_hash)
    assert again is op, "the driver asking again follows the same step"
    await fake.until(lambda: op.outcome is not None, "the step done")
    assert (op.outcome, op.error, fake.recreated) == ("ok", None, ["db0"])
    assert op.steps[-1][1] == "done: ok"


async def test_a_slot_the_store_refused_is_asked_for_again(fake: Fake) -> None:
    """The executor's recreate ended 'waiting for disruption budget' (the slot txn lost): the step
    asks the planner again instead of failing."""
    assert fake.upgrades is not None
    fake.coordinated, fake.claim = True, DRIVEN_ELSEWHERE
    steps = fake.upgrades.nodes
    op = node_op("db0")
    task = asyncio.ensure_future(steps.local(op, "db0", False, TARGET))
    await fake.until(lambda: "db0" in steps.asks, "db0 asked")
    steps.granted("db0")
    steps.finished("db0", "waiting for disruption budget: db1 (unhealthy)")
    assert "db0" in steps.asks, "asked again"
    await fake.until(task.done, "the step done")
    await task
    assert fake.recreated == ["db0"]
