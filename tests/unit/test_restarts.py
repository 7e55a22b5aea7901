"""Planned and rolling restarts (operations/restarts.py) against a daemon that implements
`restarts.Host` (tests/unit/scenes.py): the test plays the reconcile loop, cycle by cycle, changing
what the planner shows; another machine's agent is a real API in-process."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from ceres_supervisor.decisions.planning import NodeRecord, NodeState, NodeView
from ceres_supervisor.operations import restarts
from ceres_supervisor.surfaces import api
from ceres_supervisor.surfaces.snapshot import Snapshot

from .scenes import META3, FakeDaemon, build, healthy, snapshot
from .test_coordinator import until


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[FakeDaemon]:
    desired = build(
        tmp_path, META3.replace("[cluster]\n", '[supervisor]\nstart_timeout = "2s"\n\n[cluster]\n', 1)
    )
    obs, plan = healthy(desired)
    one = FakeDaemon(snapshot(desired, obs, plan), tmp_path / "state")
    yield one
    await one.close()


def shown(snap: Snapshot, node: str, state: NodeState, reason: str | None = None, *, run: str | None = None,
          available: bool = False) -> Snapshot:  # fmt: skip
    """`snap` with `node` in `state` (a new run of its container when `run` is given)."""
    assert snap.plan is not None
    view = NodeView(state, reason, available=available)
    records = dict(snap.plan.records)
    if run is not None:
        records[node] = replace(records.get(node, NodeRecord()), run_key=run)
    return replace(snap, plan=replace(snap.plan, views={**snap.plan.views, node: view}, records=records))


def texts(op: restarts.Operation) -> list[str]:
    return [text for _at, text in op.steps]


def ended(op: restarts.Operation) -> tuple[str | None, str | None]:
    """The outcome and error, read anew (a test's earlier assert does not narrow what an await changed)."""
    return op.outcome, op.error


async def granted_and_done(daemon: FakeDaemon, node: str, error: str | None = None) -> None:
    """The planner grants the stop (the cycle shows the node stopping), the executor flushes, stops
    and starts it (or fails)."""
    daemon.snapshot = shown(daemon.snapshot, node, NodeState.STOPPING, "planned restart")
    daemon.operations.granted(node)
    daemon.operations.step(node, "flush_memtable: ok")
    daemon.operations.finished(node, error)
    await daemon.poke()


# --- the order ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("leader", "role", "expected"),
    [
        ("meta0", None, ["meta1", "meta2", "meta0", "db0", "db1", "db2"]),
        ("meta1", None, ["meta0", "meta2", "meta1", "db0", "db1", "db2"]),
        ("meta2", "meta", ["meta0", "meta1", "meta2"]),
        (None, None, ["meta0", "meta1", "meta2", "db0", "db1", "db2"]),
        ("meta1", "ceresdb", ["db0", "db1", "db2"]),
    ],
)
def test_a_rolling_restart_takes_the_meta_followers_then_the_leader_then_ceresdb(
    tmp_path: Path, leader: str | None, role: str | None, expected: list[str]
) -> None:
    """The leader goes last among meta: restarting it first would move leadership at every step."""
    assert restarts.order(build(tmp_path, META3), leader, role) == expected


# --- a planned restart ------------------------------------------------------------------------------


async def test_a_planned_restart_waits_for_its_slot_then_for_health_then_for_the_shards(
    daemon: FakeDaemon,
) -> None:
    ops, before = daemon.operations, daemon.snapshot
    old_run = before.records["db1"].run_key
    op = await ops.begin("restart", ["db1"], "cli", daemon.spawn)
    await daemon.settled()
    assert (op.current, ops.requested, ops.restart_reasons()) == (
        "db1",
        {"db1": op.id},
        {"db1": f"planned restart ({op.id})"},
    )
    await daemon.cycle(
        shown(before, "db1", NodeState.HEALTHY, "waiting for disruption budget: db0 (unhealthy)")
    )
    assert texts(op)[-1] == "db1: waiting for disruption budget: db0 (unhealthy)" and op.outcome is None
    await granted_and_done(daemon, "db1")
    assert daemon.planned == ["db1"] and ops.requested == {}
    await daemon.cycle(shown(before, "db1", NodeState.HEALTHY, run=old_run, available=True))
    assert op.outcome is None  # still the old run: the restart has not been seen yet
    await daemon.cycle(shown(before, "db1", NodeState.STARTING, run="id-db1@new"))
    await daemon.cycle(
        shown(before, "db1", NodeState.REOPENING, "shards 1, 4 not reopened yet", run="id-db1@new")
    )
    await daemon.cycle(shown(before, "db1", NodeState.HEALTHY, run="id-db1@new", available=False))
    assert op.outcome is None  # healthy but without its shards: the planned restart is not over
    await daemon.cycle(shown(before, "db1", NodeState.HEALTHY, run="id-db1@new", available=True))
    await daemon.settled()
    assert ended(op) == ("ok", None)
    assert texts(op) == [
        "db1: waiting for a disruption slot",
        "db1: waiting for disruption budget: db0 (unhealthy)",
        "db1: disruption slot granted",
        "db1: flush_memtable: ok",
        "db1: waiting until healthy (start_timeout 2s)",
        "db1: healthy; waiting for its shards (CeresMeta 1.2.2's pace)",
        "db1: shards 1, 4 not reopened yet",
        "db1: healthy with its shards",
        "done: ok",
    ]
    events = [(e.node, e.type, e.reason) for e in daemon.events]
    assert events == [
        ("db1", "operation_started", "cli"),
        ("db1", "planned_restart", "cli"),
        ("db1", "operation_done", "ok"),
    ]
    assert (
        op.document()["outcome"] == "ok"
        and op.document()["steps"][0]["text"] == "db1: waiting for a disruption slot"
    )


async def test_a_meta_member_is_done_once_healthy(daemon: FakeDaemon) -> None:
    op = await daemon.operations.begin("restart", ["meta1"], "api", daemon.spawn)
    await daemon.settled()
    await granted_and_done(daemon, "meta1")
    await daemon.cycle(shown(daemon.snapshot, "meta1", NodeState.HEALTHY, run="id-meta1@new"))
    await daemon.settled()
    assert op.outcome == "ok" and texts(op)[-2:] == ["meta1: healthy, meta leader meta0", "done: ok"]


async def test_a_meta_member_healthy_without_a_leader_waits_for_one(daemon: FakeDaemon) -> None:
    """A stopped leader takes its leader key with it: the next member waits until a leader holds it."""
    assert daemon.snapshot.observation is not None
    op = await daemon.operations.begin("restart", ["meta1"], "api", daemon.spawn)
    await daemon.settled()
    await granted_and_done(daemon, "meta1")
    with_leader = daemon.snapshot.observation
    leaderless = replace(daemon.snapshot, observation=replace(with_leader, leader=None))
    await daemon.cycle(shown(leaderless, "meta1", NodeState.HEALTHY, run="id-meta1@new"))
    await daemon.cycle()
    assert op.outcome is None and texts(op)[-1] == "meta1: healthy; waiting for a meta leader"
    await daemon.cycle(replace(daemon.snapshot, observation=with_leader))
    await daemon.settled()
    assert op.outcome == "ok" and texts(op)[-2:] == ["meta1: healthy, meta leader meta0", "done: ok"]


async def test_shards_that_do_not_come_back_fail_the_operation(daemon: FakeDaemon) -> None:
    op = await daemon.operations.begin("restart", ["db0"], "api", daemon.spawn)
    await daemon.settled()
    await granted_and_done(daemon, "db0")
    await daemon.cycle(shown(daemon.snapshot, "db0", NodeState.REOPENING, "waiting", run="id-db0@new"))
    await daemon.cycle(
        shown(daemon.snapshot, "db0", NodeState.LEASE_LOST, "shard 0 has no lock", run="id-db0@new")
    )
    await daemon.settled()
    assert (op.outcome, op.error) == (
        "failed",
        "db0 did not get its shards back (lease_lost: shard 0 has no lock)",
    )


async def test_a_node_not_healthy_within_start_timeout_fails_the_operation(
    daemon: FakeDaemon, tmp_path: Path
) -> None:
    short = build(
        tmp_path / "short",
        META3.replace("[cluster]\n", '[supervisor]\nstart_timeout = "100ms"\n\n[cluster]\n', 1),
    )
    daemon.snapshot = replace(daemon.snapshot, desired=short)
    op = await daemon.operations.begin("restart", ["db0"], "api", daemon.spawn)
    await daemon.settled()
    await granted_and_done(daemon, "db0")
    starting = shown(daemon.snapshot, "db0", NodeState.STARTING, "GET / refused", run="id-db0@new")
    async with asyncio.timeout(20):  # start_timeout is 0.1 s: cycles go on until it has passed
        while op.outcome is None:
            await daemon.cycle(starting)
            await asyncio.sleep(0.05)
    assert (op.outcome, op.error) == ("failed", "db0 not healthy within 0.1s (starting: GET / refused)")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            "stop container: Docker did not answer in time",
            "db0: stop container: Docker did not answer in time",
        ),
        ("internal error: RuntimeError: x", "db0: internal error: RuntimeError: x"),
    ],
)
async def test_an_action_that_fails_fails_the_operation(
    daemon: FakeDaemon, error: str, expected: str
) -> None:
    op = await daemon.operations.begin("restart", ["db0"], "api", daemon.spawn)
    await daemon.settled()
    await granted_and_done(daemon, "db0", error)
    await daemon.settled()
    assert (op.outcome, op.error) == ("failed", expected) and daemon.planned == []


async def test_a_slot_the_store_refused_is_asked_for_again(daemon: FakeDaemon) -> None:
    ops = daemon.operations
    op = await ops.begin("restart", ["db0"], "api", daemon.spawn)
    await daemon.settled()
    ops.granted("db0")
    ops.finished("db0", "waiting for disruption budget: db1 (slot held by 127.0.0.2)")
    assert ops.requested == {"db0": op.id}  # the planner is asked again; the operation goes on
    await daemon.cycle()
    await granted_and_done(daemon, "db0")
    await daemon.cycle(shown(daemon.snapshot, "db0", NodeState.HEALTHY, run="id-db0@new", available=True))
    await daemon.settled()
    assert op.outcome == "ok"


async def test_a_node_that_fails_while_waiting_for_its_slot_is_left_to_the_supervisor(
    daemon: FakeDaemon,
) -> None:
    op = await daemon.operations.begin("restart", ["db2"], "api", daemon.spawn)
    await daemon.cycle(shown(daemon.snapshot, "db2", NodeState.BACKOFF, "exit 137"))
    await daemon.settled()
    assert (op.outcome, op.error) == (
        "failed",
        "db2 is backoff (exit 137): the supervisor restarts it itself",
    )
    assert daemon.operations.requested == {}


async def test_a_node_taken_out_of_the_file_or_on_a_machine_without_agent_fails(
    daemon: FakeDaemon, tmp_path: Path
) -> None:
    gone = await daemon.operations.begin("restart", ["db9"], "api", daemon.spawn)
    daemon.snapshot = snapshot(build(tmp_path / "remote", META3, local=False))
    away = await daemon.operations.begin("restart", ["db1"], "api", daemon.spawn)
    await daemon.settled()
    assert (gone.outcome, gone.error) == ("failed", "db9 is not in the desired-state file any more")
    assert (away.outcome, away.error) == ("failed", "db1 runs on 127.0.0.1, whose supervisor is not up")


async def test_an_operation_that_crashes_fails_with_the_error(daemon: FakeDaemon) -> None:
    daemon.snapshot = replace(daemon.snapshot, desired=None)  # type: ignore[arg-type]  # a broken daemon
    crashed = await daemon.operations.begin("restart", ["db0"], "api", daemon.spawn)
    await daemon.settled()
    assert crashed.outcome == "failed" and (crashed.error or "").startswith("internal error: AttributeError")


async def test_a_stopping_supervisor_cancels_the_operation(daemon: FakeDaemon) -> None:
    op = await daemon.operations.begin("rolling-restart", ["db0", "db1"], "api", daemon.spawn)
    await daemon.settled()
    await daemon.close()
    assert (op.outcome, op.error) == ("cancelled", "the supervisor is stopping")
    assert daemon.released == 1 and daemon.operations.requested == {}


# --- rolling restarts --------------------------------------------------------------------------------


async def test_a_rolling_restart_goes_one_node_at_a_time_and_stops_when_asked(daemon: FakeDaemon) -> None:
    ops = daemon.operations
    op = await ops.begin("rolling-restart", ["meta1", "db0", "db1"], "cli", daemon.spawn)
    assert op.claimed and daemon.claims == [{"kind": "rolling-restart", "id": op.id, "who": "cli"}]
    await daemon.settled()
    assert ops.requested == {"meta1": op.id}  # one node at a time
    await granted_and_done(daemon, "meta1")
    await daemon.cycle(shown(daemon.snapshot, "meta1", NodeState.HEALTHY, run="id-meta1@new"))
    assert ops.requested == {"db0": op.id} and ops.running_on("db0") is op
    op.cancel = True
    await granted_and_done(daemon, "db0")
    await daemon.cycle(shown(daemon.snapshot, "db0", NodeState.HEALTHY, run="id-db0@new", available=True))
    await daemon.settled()
    assert (op.outcome, op.error) == ("cancelled", "stopped before db1 (asked)")
    assert daemon.released == 1 and ops.requested == {}


async def test_a_rolling_restart_stops_at_the_first_node_that_fails(daemon: FakeDaemon) -> None:
    op = await daemon.operations.begin("rolling-restart", ["db0", "db1"], "cli", daemon.spawn)
    await daemon.settled()
    await granted_and_done(daemon, "db0", "start container: image gone")
    await daemon.settled()
    assert (op.outcome, op.error, op.current) == ("failed", "db0: start container: image gone", "db0")
    assert "db1" not in daemon.operations.requested and daemon.released == 1


async def test_finished_operations_beyond_the_kept_number_are_forgotten(daemon: FakeDaemon) -> None:
    ops = daemon.operations
    ops.kept = OrderedDict(
        (f"old-{i}", restarts.Operation(f"old-{i}", "restart", "api", ["db0"], outcome="ok"))
        for i in range(restarts.KEPT)
    )
    op = await ops.begin("restart", ["db1"], "api", daemon.spawn)
    assert len(ops.kept) == restarts.KEPT and "old-0" not in ops.kept and ops.get(op.id) is op
    ops.kept["old-1"].outcome = None  # a running one is never forgotten
    await ops.begin("restart", ["db2"], "api", daemon.spawn)
    assert "old-1" in ops.kept


# --- another machine's node ---------------------------------------------------------------------------


@pytest.fixture
async def remote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[FakeDaemon, str]]:
    """The agent of 127.0.0.2: a real API over its own daemon, in-process."""
    monkeypatch.setattr(restarts, "REMOTE_POLL_S", 0.01)  # follow the other machine's operation briskly
    desired = build(tmp_path / "there", META3)
    obs, plan = healthy(desired)
    other = FakeDaemon(snapshot(desired, obs, plan), tmp_path / "there" / "state", agent="127.0.0.2")
    client: TestClient[Any, Any] = TestClient(TestServer(api.Api(other, "t0ken").application()))
    await client.start_server()
    yield other, str(client.make_url("")).rstrip("/")
    await other.close()
    await client.close()


async def test_another_machine_s_node_is_restarted_by_its_own_agent_and_followed(
    daemon: FakeDaemon, remote: tuple[FakeDaemon, str]
) -> None:
    other, url = remote
    async with aiohttp.ClientSession() as session:
        daemon.session, daemon.operations.token = session, "t0ken"
        daemon.remote = {"db1": ("127.0.0.2", url)}
        op = await daemon.operations.begin("rolling-restart", ["db1"], "cli", daemon.spawn)
        await until(lambda: other.operations.kept, "the other agent took the restart")
        theirs = next(iter(other.operations.kept.values()))
        assert (theirs.who, theirs.nodes) == (f"cli via {op.id} on 127.0.0.1", ["db1"])
        await other.settled()
        await granted_and_done(other, "db1")
        await other.cycle(shown(other.snapshot, "db1", NodeState.HEALTHY, run="id-db1@new", available=True))
        await until(lambda: op.outcome is not None, "the operation ended")
    assert (op.outcome, op.error) == ("ok", None)
    assert f"db1: asking the supervisor on 127.0.0.2 ({url})" in texts(op)
    assert "127.0.0.2: db1: healthy with its shards" in texts(op)


async def test_another_machine_s_refusal_or_failure_fails_the_operation(
    daemon: FakeDaemon, remote: tuple[FakeDaemon, str]
) -> None:
    other, url = remote
    async with aiohttp.ClientSession() as session:
        daemon.session = session
        daemon.remote = {"db1": ("127.0.0.2", url)}
        refused = await daemon.operations.begin("restart", ["db1"], "cli", daemon.spawn)  # no token
        await daemon.settled()
        assert (refused.outcome, refused.error) == (
            "failed",
            "127.0.0.2 refused to restart db1: HTTP 401: {'error': 'unauthorized', 'status': 401}",
        )
        daemon.operations.token = "t0ken"
        failing = await daemon.operations.begin("restart", ["db1"], "cli", daemon.spawn)
        await until(lambda: other.operations.kept, "the other agent took the restart")
        await other.settled()
        await granted_and_done(other, "db1", "stop container: boom")
        await until(lambda: failing.outcome is not None, "the operation ended")
        assert failing.error == "db1 on 127.0.0.2: failed: db1: stop container: boom"
        daemon.remote = {"db1": ("127.0.0.2", "http://127.0.0.1:9")}  # nothing listens there
        unreachable = await daemon.operations.begin("restart", ["db1"], "cli", daemon.spawn)
        await until(lambda: unreachable.outcome is not None, "the operation ended")
        assert (unreachable.error or "").startswith("cannot follow db1 on 127.0.0.2: ")
    daemon.session = None
    no_session = await daemon.operations.begin("restart", ["db1"], "cli", daemon.spawn)
    await daemon.settled()
    assert no_session.error == "no HTTP session"
