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

import pytest

from ceres_supervisor.decisions import upgrades as decide
from ceres_supervisor.decisions.planning import ClusterState, NodeRecord, NodeState, NodeView, Plan
from ceres_supervisor.desired import containers, loading
from ceres_supervisor.model.versions import parse_release
from ceres_supervisor.operations import restarts, upgrades

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

    def remote_agent(self, node: str) -> tuple[str, str] | None:
        return None

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
