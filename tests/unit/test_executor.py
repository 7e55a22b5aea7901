"""The executor (actions/executor.py) against an engine that really implements what it calls (a
fake Docker: containers in a dict, every call recorded in order), real files under tmp_path, and
slots and a flush that record when they are asked."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import socket
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import pytest

from ceres_supervisor.actions import executor
from ceres_supervisor.actions.executor import Executor, Outcome
from ceres_supervisor.adapters.engine import EngineConflict, EngineError, EngineImageMissing, EngineNotFound
from ceres_supervisor.decisions.planning import Action
from ceres_supervisor.desired import identity
from ceres_supervisor.desired.containers import ContainerSpec, DesiredCluster, DesiredNode
from ceres_supervisor.model.errors import SlotRefused
from ceres_supervisor.model.observed import ObservedContainer

from .scenes import build
from .test_coordinator import until


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("0.0.0.0", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def cluster_text() -> str:
    """One meta member and two CeresDB nodes on ports free on this machine now (preflight binds them)."""
    p = free_ports(9)
    return f"""
[cluster]
state_dir = "/var/lib/ceres-supervisor"

[[meta.nodes]]
name = "meta0"
host = "127.0.0.1"
client_port = {p[0]}
peer_port = {p[1]}
http_port = {p[2]}

[[ceresdb.nodes]]
name = "db0"
host = "127.0.0.1"
grpc_port = {p[3]}
http_port = {p[4]}
mysql_port = {p[5]}

[[ceresdb.nodes]]
name = "db1"
host = "127.0.0.1"
grpc_port = {p[6]}
http_port = {p[7]}
mysql_port = {p[8]}
"""


IMAGE = "ceresdb/ceresdb-server:v1.2.2"
"""The CeresDB image of `cluster_text()` (the default of the file)."""


class FakeEngine:
    """The calls the executor makes of `adapters.engine.Engine`, kept in order. `fail[call]` makes
    that call raise; `hold` makes stops wait until it is set; `missing` are images not on this host;
    `users[name]` the running containers that use the data directory `.../data/<name>`."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail: dict[str, Exception] = {}
        self.hold = asyncio.Event()
        self.hold.set()
        self.created: list[ContainerSpec] = []
        self.missing: set[str] = set()
        self.users: dict[str, list[str]] = {}

    def _call(self, name: str, target: str) -> None:
        self.calls.append((name, target))
        if name in self.fail:
            raise self.fail[name]

    async def image_exists(self, image: str) -> bool:
        self._call("image_exists", image)
        return image not in self.missing

    async def data_users(self, path: str) -> list[str]:
        self._call("data_users", Path(path).name)
        return self.users.get(Path(path).name, [])

    async def stop(self, container_id: str, timeout_s: float) -> None:
        await self.hold.wait()
        self._call("stop", container_id)

    async def kill(self, container_id: str) -> None:
        self._call("kill", container_id)

    async def start(self, container_id: str) -> None:
        self._call("start", container_id)

    async def remove(self, container_id: str) -> None:
        self._call("remove", container_id)

    async def create_and_start(self, spec: ContainerSpec) -> str:
        self._call("create_and_start", spec.name)
        self.created.append(spec)
        return f"id-{spec.name}"

    async def stop_all(self, container_ids: Sequence[str], timeout_s: float) -> dict[str, str]:
        self.calls += [("stop_all", cid) for cid in container_ids]
        return {
            cid: str(self.fail["stop_all"])
            for cid in container_ids
            if "stop_all" in self.fail and cid.startswith("bad")
        }


class Recorder:
    """Slots and the flush, recording into the engine's call list (one order for everything)."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.refuse: str | None = None
        self.meanwhile: Callable[[], None] = lambda: None
        """Runs while a slot is being taken (the store is slow: the operator pauses the node)."""

    async def acquire(self, node: str, role: str, reason: str) -> None:
        self.engine.calls.append(("slot", f"{node}/{role}"))
        self.meanwhile()
        if self.refuse is not None:
            raise SlotRefused(self.refuse)

    async def release(self, releasable: frozenset[str]) -> None:
        self.engine.calls.append(("release", ",".join(sorted(releasable))))

    async def flush(self, node: DesiredNode) -> str:
        self.engine.calls.append(("flush", node.name))
        return "ok"


class Run:
    def __init__(self, desired: DesiredCluster, slots: bool = True, flush: bool = True) -> None:
        self.desired = desired
        self.engine = FakeEngine()
        self.recorder = Recorder(self.engine)
        self.outcomes: list[Outcome] = []
        self.steps: list[tuple[str, str]] = []
        self.paused: set[str] = set()
        self.executor = Executor(
            self.engine,  # type: ignore[arg-type]
            7.0,
            self.outcomes.append,
            slots=self.recorder if slots else None,
            flush=self.recorder.flush if flush else None,
            on_step=lambda node, text: self.steps.append((node, text)),
            paused=lambda node: node in self.paused,
        )

    async def do(self, action: Action) -> Outcome:
        async with asyncio.TaskGroup() as group:
            assert self.executor.submit(group, action, self.desired)
        return self.outcomes[-1]


@pytest.fixture
def desired(tmp_path: Path) -> DesiredCluster:
    return build(tmp_path, cluster_text())


def restart(node: str, role: str = "ceresdb") -> Action:
    """A planned restart as the planner makes it (decisions/nodes.py): a CeresDB node flushes first."""
    return Action(
        "restart",
        node,
        f"id-{node}",
        "planned restart (op-1)",
        by_choice=True,
        role=role,
        flush=role == "ceresdb",
    )


async def test_a_planned_restart_of_ceresdb_takes_its_slot_flushes_then_stops_and_starts(
    desired: DesiredCluster,
) -> None:
    """The flush comes after the slot (no flush for a stop that may not happen) and before the stop
    (the memtables reach storage before SIGTERM)."""
    run = Run(desired)
    outcome = await run.do(restart("db0"))
    assert outcome.ok and outcome.error is None and outcome.step is None
    assert run.engine.calls == [
        ("slot", "db0/ceresdb"),
        ("flush", "db0"),
        ("stop", "id-db0"),
        ("data_users", "db0"),
        ("start", "id-db0"),
    ]
    assert run.steps == [
        ("db0", "flush_memtable: ok"),
        ("db0", "stopping (SIGTERM, then SIGKILL after 7s)"),
        ("db0", "starting"),
    ]
    node = desired.node("db0")
    assert node is not None and node.config_path.read_bytes() == node.config_text  # written before the start
    assert identity.problems([("db0", node.data_dir)], identity.Owner("defaultCluster", "ceresdb")) == {}


async def test_a_meta_member_is_not_flushed(desired: DesiredCluster) -> None:
    """Not even when the action asks for a flush: only a CeresDB node has memtables."""
    run = Run(desired)
    assert (await run.do(dataclasses.replace(restart("meta0", "meta"), flush=True))).ok
    assert run.engine.calls == [
        ("slot", "meta0/meta"),
        ("stop", "id-meta0"),
        ("data_users", "meta0"),
        ("start", "id-meta0"),
    ]


@pytest.mark.parametrize(
    ("action", "calls"),
    [
        (Action("create", "db0", None, "missing"),
         [("image_exists", IMAGE), ("data_users", "db0"), ("create_and_start", "ceres-defaultCluster-db0")]),
        (Action("start", "db0", "id-db0", "exit 137"), [("data_users", "db0"), ("start", "id-db0")]),
        (Action("stop", "db0", "id-db0", "unhealthy", by_choice=True), [("slot", "db0/ceresdb"), ("stop", "id-db0")]),
        (Action("recreate", "db1", "id-db1", "spec changed", by_choice=True),
         [("image_exists", IMAGE), ("slot", "db1/ceresdb"), ("stop", "id-db1"), ("remove", "id-db1"),
          ("data_users", "db1"), ("create_and_start", "ceres-defaultCluster-db1")]),
        (Action("recreate", "db1", "id-db1", "exited, spec changed"),
         [("image_exists", IMAGE), ("stop", "id-db1"), ("remove", "id-db1"), ("data_users", "db1"),
          ("create_and_start", "ceres-defaultCluster-db1")]),
        (Action("remove", "db9", "id-db9", "removed from the file", by_choice=True, role="ceresdb"),
         [("slot", "db9/ceresdb"), ("stop", "id-db9"), ("remove", "id-db9")]),
    ],
)  # fmt: skip
async def test_each_action_makes_its_calls_in_order(
    desired: DesiredCluster, action: Action, calls: list[tuple[str, str]]
) -> None:
    run = Run(desired)
    outcome = await run.do(action)
    assert outcome.ok, outcome
    assert run.engine.calls == calls
    assert not any(text.startswith("flush") for _node, text in run.steps)


async def test_without_slots_a_stop_by_choice_takes_none(desired: DesiredCluster) -> None:
    run = Run(desired, slots=False, flush=False)
    assert (await run.do(restart("db0"))).ok
    assert run.engine.calls == [("stop", "id-db0"), ("data_users", "db0"), ("start", "id-db0")]


async def test_a_config_holding_a_secret_is_written_0600(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CERES_TEST_PW", "pw")
    text = cluster_text() + (
        '\n[ceresdb.object_store]\ntype = "Aliyun"\nkey_id = "k"\nkey_secret = { env = "CERES_TEST_PW" }\n'
        'endpoint = "e"\nbucket = "b"\nprefix = "p"\n'
    )
    secret = build(tmp_path, text)
    run = Run(secret)
    assert (await run.do(Action("create", "db0", None, "missing"))).ok
    node = secret.node("db0")
    assert node is not None and node.has_secret
    assert stat.S_IMODE(node.config_path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("fail", "action", "step", "error"),
    [
        ({"stop": EngineError("stop container: boom")}, restart("db0"), "stop", "stop container: boom"),
        ({"start": EngineNotFound("start container: gone")}, restart("db0"), "start", "start container: gone"),
        ({"remove": EngineConflict("remove container: in use")}, Action("recreate", "db1", "id-db1", "changed"),
         "remove", "remove container: in use"),
        ({"create_and_start": EngineImageMissing("no image")}, Action("create", "db0", None, "missing"), "create",
         "image ceresdb/ceresdb-server:v1.2.2 is not present on this host "
         '(docker pull or docker load it, or set supervisor.pull = "missing")'),
        ({"start": RuntimeError("a bug")}, Action("start", "db0", "id-db0", "exit 1"), "start",
         "internal error: RuntimeError: a bug"),
    ],
)  # fmt: skip
async def test_a_failed_step_fails_only_its_node_and_says_which_step(
    desired: DesiredCluster, fail: dict[str, Exception], action: Action, step: str, error: str
) -> None:
    run = Run(desired)
    run.engine.fail = fail
    outcome = await run.do(action)
    assert (outcome.ok, outcome.step, outcome.error) == (False, step, error)
    assert run.executor.busy == {}


@pytest.mark.parametrize("kind", ["create", "recreate"])
async def test_a_missing_image_fails_before_anything_stops(
    desired: DesiredCluster, kind: Literal["create", "recreate"]
) -> None:
    run = Run(desired)
    run.engine.missing.add(IMAGE)
    action = Action(
        kind, "db1", None if kind == "create" else "id-db1", "spec changed", by_choice=kind == "recreate"
    )
    outcome = await run.do(action)
    assert (outcome.ok, outcome.step) == (False, "image")
    assert outcome.error == (
        "image ceresdb/ceresdb-server:v1.2.2 is not present on this host "
        '(docker pull or docker load it, or set supervisor.pull = "missing")'
        + ("; nothing was stopped" if kind == "recreate" else "")
    )
    assert run.engine.calls == [("image_exists", IMAGE)]  # no slot, no stop, no create


@pytest.mark.parametrize(
    ("action", "step", "calls"),
    [
        (Action("start", "db0", "id-db0", "exit 1"), "start", [("data_users", "db0")]),
        (Action("create", "db0", None, "missing"), "create", [("image_exists", IMAGE), ("data_users", "db0")]),
        (restart("db0"), "start", [("slot", "db0/ceresdb"), ("flush", "db0"), ("stop", "id-db0"), ("data_users", "db0")]),
    ],
)  # fmt: skip
async def test_a_data_directory_a_running_container_writes_to_is_not_started_on(
    desired: DesiredCluster, action: Action, step: str, calls: list[tuple[str, str]]
) -> None:
    node = desired.node("db0")
    assert node is not None
    run = Run(desired)
    run.engine.users["db0"] = ["stray-ceresdb"]
    outcome = await run.do(action)
    assert (outcome.ok, outcome.step) == (False, step)
    assert outcome.error == (
        f"data directory {node.data_dir} is in use by running container stray-ceresdb: not started beside it"
    )
    assert run.engine.calls == calls


@pytest.mark.parametrize("comes_up", [True, False])
async def test_a_stop_of_a_node_still_starting_waits_for_it_to_come_up_else_kills_it(
    desired: DesiredCluster, comes_up: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(executor, "UP_POLL_S", 0.01)
    run = Run(desired, slots=False, flush=False)
    asked: list[str] = []

    async def is_up(node: DesiredNode) -> bool:
        asked.append(node.name)
        return comes_up and len(asked) == 2

    run.executor.is_up = is_up
    run.executor.stop_timeout_s = 5.0 if comes_up else 0.05
    outcome = await run.do(Action("stop", "db0", "id-db0", "unhealthy", by_choice=True, while_starting=True))
    assert outcome.ok, outcome
    if comes_up:
        assert run.engine.calls == [("stop", "id-db0")] and asked == ["db0", "db0"]
        assert re.fullmatch(r"it came up after \d+\.\ds of waiting, then SIGTERM", outcome.detail or "")
    else:
        assert run.engine.calls == [("kill", "id-db0")] and asked
        assert outcome.detail == "still starting after 0.05s: SIGKILL"
    assert run.steps[0] == (
        "db0",
        f"still starting: waiting for it to come up (SIGKILL after {run.executor.stop_timeout_s:g}s)",
    )


async def test_a_refused_slot_stops_nothing(desired: DesiredCluster) -> None:
    run = Run(desired)
    run.recorder.refuse = "waiting for disruption budget: db1 (slot held by 127.0.0.2)"
    outcome = await run.do(restart("db0"))
    assert (outcome.ok, outcome.step, outcome.error) == (
        False,
        "slot",
        "waiting for disruption budget: db1 (slot held by 127.0.0.2)",
    )
    assert run.engine.calls == [("slot", "db0/ceresdb")]  # no flush, no stop


async def test_a_node_paused_while_its_stop_waited_for_its_slot_is_not_stopped(
    desired: DesiredCluster,
) -> None:
    """The stop was decided before the pause; its slot took long (an agent partitioned from its
    etcd member: 28 s in the several-machines chaos benchmark, which then counted a pause lost).
    Once the slot is taken the pause is asked again: the slot goes back, nothing is stopped."""
    run = Run(desired)
    run.recorder.meanwhile = lambda: run.paused.add("db0")
    outcome = await run.do(restart("db0"))
    assert (outcome.ok, outcome.step) == (False, "slot"), outcome
    assert outcome.error == "paused by the operator while its stop waited for its slot: not stopped"
    assert run.engine.calls == [("slot", "db0/ceresdb"), ("release", "db0")]  # no flush, no stop


async def test_a_port_taken_by_another_process_fails_the_create_before_docker_is_asked(
    desired: DesiredCluster,
) -> None:
    node = desired.node("db0")
    assert node is not None
    with socket.socket() as squatter:
        squatter.bind(("0.0.0.0", node.ports["http"]))
        squatter.listen()
        assert executor.port_in_use(node.ports["http"])
        run = Run(desired)
        outcome = await run.do(Action("create", "db0", None, "missing"))
    assert (outcome.ok, outcome.step) == (False, "create")
    assert (
        outcome.error == f"port {node.ports['http']} (http) already in use on this machine by another process"
    )
    assert run.engine.calls == [("image_exists", IMAGE)]  # only asked whether the image is there
    assert not executor.port_in_use(node.ports["http"])


async def test_a_data_directory_of_another_node_is_never_started_on(desired: DesiredCluster) -> None:
    db0, db1 = desired.node("db0"), desired.node("db1")
    assert db0 is not None and db1 is not None
    db0.data_dir.parent.mkdir(parents=True, exist_ok=True)
    identity.ensure(db1.data_dir, identity.Owner("defaultCluster", "ceresdb"), "db1")
    db1.data_dir.rename(db0.data_dir)  # db1's data where db0's belongs
    run = Run(desired)
    outcome = await run.do(Action("start", "db0", "id-db0", "exit 1"))
    assert (outcome.ok, outcome.step) == (False, "start")
    assert "db1" in (outcome.error or "") and run.engine.calls == []


async def test_a_config_that_cannot_be_written_fails_the_start(desired: DesiredCluster) -> None:
    node = desired.node("db0")
    assert node is not None
    node.config_path.parent.parent.mkdir(parents=True, exist_ok=True)
    node.config_path.parent.write_text("a file where the directory goes")
    outcome = await Run(desired).do(Action("start", "db0", "id-db0", "exit 1"))
    assert (outcome.ok, outcome.step) == (False, "start")
    assert (outcome.error or "").startswith("cannot write ")


async def test_one_action_per_node_at_a_time_and_none_once_closing(desired: DesiredCluster) -> None:
    run = Run(desired)
    run.engine.hold.clear()  # stops wait
    async with asyncio.TaskGroup() as group:
        assert run.executor.submit(group, Action("stop", "db0", "id-db0", "x"), desired)
        assert not run.executor.submit(group, Action("start", "db0", "id-db0", "y"), desired)
        assert run.executor.submit(group, Action("start", "db1", "id-db1", "y"), desired)
        assert not run.executor.submit(group, Action("create", "db7", None, "not in the file"), desired)
        await until(lambda: "db1" not in run.executor.busy, "db1 started")
        assert run.executor.busy == {"db0": "stop"}
        assert await run.executor.drain(0.01) is False  # db0 still stopping
        run.executor.closing = True
        assert not run.executor.submit(group, Action("start", "db1", "id-db1", "y"), desired)
        run.engine.hold.set()
        assert await run.executor.drain(10) is True
    assert [o.action.node for o in run.outcomes] == ["db1", "db0"]


async def test_an_action_applied_before_any_file_was_submitted_does_not_guess_the_owner(
    desired: DesiredCluster,
) -> None:
    run = Run(desired)
    with pytest.raises(RuntimeError, match="no file submitted yet"):
        await run.executor.apply(Action("start", "db0", "id-db0", "x"), desired.node("db0"), lambda _s: None)


def observed(cid: str, node: str, role: str) -> ObservedContainer:
    return ObservedContainer(cid, f"ceres-c-{node}", node, role, "h", "running", "img")


@pytest.mark.parametrize("remove", [True, False])
async def test_stopping_the_cluster_stops_ceresdb_before_meta_and_reports_what_failed(remove: bool) -> None:
    engine = FakeEngine()
    engine.fail["stop_all"] = EngineError("stop container: timed out")
    listed = [
        observed("m0", "meta0", "meta"),
        observed("d0", "db0", "ceresdb"),
        observed("bad1", "db1", "ceresdb"),
    ]

    async def containers() -> list[ObservedContainer]:
        return listed

    phases: list[str] = []

    def timeout() -> float:
        phases.append("asked")
        return 5.0

    problems = await executor.stop_cluster(engine, containers, timeout, remove)  # type: ignore[arg-type]
    assert problems == ["db1: stop container: timed out"]
    assert [c for c in engine.calls if c[0] == "stop_all"] == [
        ("stop_all", "d0"),
        ("stop_all", "bad1"),
        ("stop_all", "m0"),
    ]
    assert [c for c in engine.calls if c[0] == "remove"] == (
        [("remove", "d0"), ("remove", "m0")] if remove else []
    )
    assert phases == ["asked", "asked"]  # the time of each phase is asked when it starts
    engine.fail = {"remove": EngineError("remove container: conflict")}
    problems = await executor.stop_cluster(engine, containers, 5.0, True)  # type: ignore[arg-type]
    assert problems == (
        [
            "db0: remove container: conflict",
            "db1: remove container: conflict",
            "meta0: remove container: conflict",
        ]
    )


def test_a_port_nobody_holds_is_free() -> None:
    (port,) = free_ports(1)
    assert executor.port_in_use(port) is False
