"""Each situation of one node evaluated whole (decisions/nodes.py `evaluate`): the view (state,
reason, next restart, availability, lease), the record kept for the next cycle, what the node
wants, and the notes and wake-ups the cycle collects. Pure; one row per situation."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ceres_supervisor.decisions import nodes
from ceres_supervisor.decisions.backoff import Count
from ceres_supervisor.decisions.leases import Memory
from ceres_supervisor.decisions.nodes import Want
from ceres_supervisor.decisions.planning import (
    Action,
    Budget,
    Controls,
    ExitInfo,
    LeaseStatus,
    NodeRecord,
    NodeState,
    NodeView,
    Note,
    UpgradeAsk,
)
from ceres_supervisor.desired.containers import DesiredCluster
from ceres_supervisor.model.observed import (
    LeaseView,
    MetaLeader,
    MetaMemberProbe,
    ObservedContainer,
    ShardLock,
)

from .test_planning import NOW, POLICY, WALL, build, container, observation, probe

RUN = "id-db0@2026-01-01T00:00:01+00:00"
EXIT = "id-db0@2026-01-01T00:00:02+00:00"
FINISHED = datetime(2026, 1, 1, 0, 0, 2, tzinfo=UTC)
SEEN = NOW - (WALL - datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)).total_seconds()
"""run_seen_at of a run found running: Docker's StartedAt on the monotonic clock."""
NOT_READY = "meta members not ready: meta0"
HEALTHY = NodeRecord(run_key=RUN, run_seen_at=SEEN, healthy_since=NOW - 300, last_probe_at=NOW - 1)
"""db0's record after a while of health."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> DesiredCluster:
    return build(tmp_path_factory.mktemp("nodes"))


def evaluate(
    cluster: DesiredCluster,
    containers: list[ObservedContainer],
    rec: NodeRecord | None,
    node: str = "db0",
    meta_ready: bool = True,
    controls: Controls | None = None,
    **observed: Any,
) -> tuple[NodeView, NodeRecord, Want | None, list[Note], list[float]]:
    obs = observation(cluster, containers, meta_ready=meta_ready)
    obs = replace(obs, **observed)
    cycle = nodes.Cycle(cluster, obs, POLICY, NOW, lambda: 0.0, meta_ready, "meta ready" if meta_ready else NOT_READY,
                        Budget(), controls or Controls())  # fmt: skip
    cycle.lease_context = nodes.lease_contexts(cycle, {node: rec} if rec else {})
    target = cluster.node(node)
    assert target is not None
    view, record, want = nodes.evaluate(cycle, target, rec)
    return view, record, want, cycle.notes, cycle.wakes


def dead(cluster: DesiredCluster, code: int = 137) -> ObservedContainer:
    return container(cluster, "db0", "exited", exit_code=code)


def running(cluster: DesiredCluster, **changes: Any) -> ObservedContainer:
    return replace(container(cluster, "db0"), **changes)


def start(reason: str, cid: str = "id-db0", again: bool = False) -> Want:
    """A start; `again`: of a node that ran before (its grant counts a restart)."""
    return Want(Action("start", "db0", cid, reason), restart=again)


EXITED = ExitInfo(137, False, FINISHED)
KILLED = "exit 137 (SIGKILL)"


# --- exits -----------------------------------------------------------------------------------------------------


def test_a_stopped_container_found_at_first_sight_is_started_not_counted(cluster: DesiredCluster) -> None:
    assert evaluate(cluster, [dead(cluster)], None) == (
        NodeView(NodeState.STARTING, f"found stopped ({KILLED})"),
        NodeRecord(reason=f"found stopped ({KILLED})", last_exit=EXITED, accounted_exit=EXIT),
        start(f"found stopped ({KILLED})"),
        [],
        [],
    )


def test_an_exit_is_a_failure_counted_once_and_restarted_at_once(cluster: DesiredCluster) -> None:
    before = replace(HEALTHY, lease=Memory(reopen_since=5.0, progress=2, lost_since=9.0))
    view, rec, want, notes, _ = evaluate(cluster, [dead(cluster)], before)
    expected = replace(
        before, count=Count(1, (NOW,)), reason=KILLED, next_restart_at=NOW, healthy_since=None,
        last_exit=EXITED, accounted_exit=EXIT, lease=Memory(progress=2),
    )  # fmt: skip
    assert (view, rec) == (NodeView(NodeState.STARTING, KILLED), replace(expected, next_restart_at=None))
    assert want == start(KILLED, again=True) and notes == [
        Note("db0", "died", KILLED, "failure 1; restart in 0.0s")
    ]
    again = evaluate(cluster, [dead(cluster)], rec)  # the same exit, seen again: nothing more
    assert again[1].count == rec.count and again[3] == []


def test_a_second_exit_waits_its_backoff(cluster: DesiredCluster) -> None:
    once = replace(HEALTHY, count=Count(1, (NOW - 50,)), healthy_since=None)
    view, rec, want, notes, _ = evaluate(cluster, [dead(cluster)], once)
    assert view == NodeView(NodeState.BACKOFF, KILLED, NOW + 1.0)
    assert (rec.count, rec.next_restart_at, want) == (Count(2, (NOW - 50, NOW)), NOW + 1.0, None)
    assert notes == [Note("db0", "died", KILLED, "failure 2; restart in 1.0s")]


def test_the_fifth_exit_in_the_window_is_a_crashloop_said_once(cluster: DesiredCluster) -> None:
    four = replace(HEALTHY, count=Count(4, (NOW - 40, NOW - 30, NOW - 20, NOW - 10)), healthy_since=None)
    view, rec, _, notes, _ = evaluate(cluster, [dead(cluster)], four)
    assert view == NodeView(NodeState.CRASHLOOP, KILLED, NOW + 60.0) and rec.crashloop
    assert notes == [
        Note("db0", "died", KILLED, "failure 5; restart in 60.0s"),
        Note("db0", "crashloop", KILLED, "5 failures within 600s"),
    ]


def test_an_exit_the_supervisor_caused_is_no_failure(cluster: DesiredCluster) -> None:
    stopping = replace(HEALTHY, expected_exit="id-db0", reason="unhealthy: x")
    view, rec, want, notes, _ = evaluate(cluster, [dead(cluster)], stopping)
    assert rec == replace(
        stopping, expected_exit=None, healthy_since=None, last_exit=EXITED, accounted_exit=EXIT
    )
    assert (view, want, notes) == (
        NodeView(NodeState.STARTING, "unhealthy: x"), start("unhealthy: x", again=True), []
    )  # fmt: skip


def test_an_exit_while_paused_is_said_not_counted(cluster: DesiredCluster) -> None:
    view, rec, want, notes, _ = evaluate(
        cluster, [dead(cluster)], HEALTHY, controls=Controls(frozenset({"db0"}))
    )
    assert view == NodeView(NodeState.PAUSED, f"paused by the operator; container stopped ({KILLED})")
    assert rec == replace(
        HEALTHY, reason=f"stopped while paused ({KILLED})", last_exit=EXITED, accounted_exit=EXIT
    )
    assert (want, notes) == (None, [])


def test_an_exit_with_the_engine_is_a_note_not_a_failure(cluster: DesiredCluster) -> None:
    view, rec, want, notes, _ = evaluate(
        cluster, [dead(cluster)], HEALTHY, engine_restart_exits=frozenset({"id-db0"})
    )
    assert rec == replace(HEALTHY, reason="docker engine restarted", healthy_since=None, last_exit=EXITED,
                          accounted_exit=EXIT)  # fmt: skip
    assert notes == [Note("db0", "engine_restarted", KILLED, "docker engine restarted")]
    assert (view, want) == (
        NodeView(NodeState.STARTING, "docker engine restarted"),
        start("docker engine restarted", again=True),
    )


def test_a_dead_container_s_exit_is_counted_as_an_exited_one_s(cluster: DesiredCluster) -> None:
    """Docker's `dead` (a container it failed to stop or remove cleanly) is an exit all the same."""
    _view, rec, _want, notes, _ = evaluate(cluster, [replace(dead(cluster), state="dead")], HEALTHY)
    assert (rec.failures, rec.accounted_exit) == (1, EXIT)
    assert notes == [Note("db0", "died", KILLED, "failure 1; restart in 0.0s")]


@pytest.mark.parametrize(
    ("controls", "observed", "view"),
    [
        (Controls(frozenset({"db0"})), {},
         NodeView(NodeState.PAUSED, f"paused by the operator; container stopped ({KILLED})")),
        (None, {"engine_restart_exits": frozenset({"id-db0"})},
         NodeView(NodeState.STARTING, "docker engine restarted")),
    ],
    ids=["paused", "engine-restarted"],
)  # fmt: skip
def test_an_exit_that_is_no_failure_drops_the_restart_time_a_failure_had_set(
    cluster: DesiredCluster, controls: Controls | None, observed: dict[str, Any], view: NodeView
) -> None:
    """A failed action counted while the container still ran set a restart time; an exit while
    paused or with Docker's engine is no failure, so the container starts again at once (once
    unpaused) rather than after that failure's backoff."""
    before = replace(HEALTHY, count=Count(1, (NOW - 5,)), next_restart_at=NOW + 30)
    got, rec, _want, _, _ = evaluate(cluster, [dead(cluster)], before, controls=controls, **observed)
    assert (got, rec.next_restart_at, rec.failures) == (view, None, 1)


def test_an_exit_ends_the_run_whose_stop_was_counted_even_without_a_start_time(
    cluster: DesiredCluster,
) -> None:
    """Without Docker's StartedAt every run of the container has the same key (`id-db0@?`): the
    exit itself forgets the run whose stop by choice was counted, or the next run's stop would
    count no failure."""
    unknown = replace(dead(cluster), started_at=None)
    before = replace(HEALTHY, run_key=unknown.run_key, stop_counted_for=unknown.run_key)
    assert evaluate(cluster, [unknown], before)[1].stop_counted_for is None


@pytest.mark.parametrize(
    ("failed", "reason", "counted"),
    [
        (("stop", "stop container: timed out"), "stop failed: stop container: timed out", False),
        (("slot", "waiting for disruption budget: db1 (slot held by h2)"),
         "waiting for disruption budget: db1 (slot held by h2)", False),
        (("start", "start container: gone"), "start container: gone", True),
    ],
)  # fmt: skip
def test_an_action_that_failed_is_said_and_counted_unless_it_was_a_stop_or_a_slot(
    cluster: DesiredCluster, failed: tuple[str, str], reason: str, counted: bool
) -> None:
    before = replace(HEALTHY, expected_exit="id-db0")
    _view, rec, _want, notes, _ = evaluate(
        cluster, [running(cluster)], before, failed_actions={"db0": failed}
    )
    assert rec.reason == reason
    if counted:
        assert (
            notes == [Note("db0", "action_failed", reason, "failure 1; restart in 0.0s")]
            and rec.failures == 1
        )
    else:
        assert (notes, rec.expected_exit, rec.failures) == ([], None, 0)


# --- no container, busy, paused, misplaced ----------------------------------------------------------------------


def test_without_a_container_it_is_created_once_meta_is_ready_and_counted_when_it_vanished(
    cluster: DesiredCluster,
) -> None:
    assert evaluate(cluster, [], None, meta_ready=False)[:3] == (
        NodeView(NodeState.BLOCKED, NOT_READY),
        NodeRecord(),
        None,
    )
    assert evaluate(cluster, [], None)[:3] == (
        NodeView(NodeState.STARTING, None), NodeRecord(), Want(Action("create", "db0", None, "not created yet")),
    )  # fmt: skip
    gone = replace(HEALTHY, reason="x", next_restart_at=NOW - 1)
    assert evaluate(cluster, [], gone)[:3] == (
        NodeView(NodeState.STARTING, "x"), replace(gone, next_restart_at=None),
        Want(Action("create", "db0", None, "container missing"), restart=True),
    )  # fmt: skip
    waiting = replace(gone, next_restart_at=NOW + 5)
    assert evaluate(cluster, [], waiting)[:3] == (NodeView(NodeState.BACKOFF, "x", NOW + 5), waiting, None)


@pytest.mark.parametrize(
    ("busy", "state"),
    [("stop", NodeState.STOPPING), ("remove", NodeState.STOPPING), ("restart", NodeState.STOPPING),
     ("create", NodeState.STARTING), ("start", NodeState.STARTING), ("recreate", NodeState.STARTING)],
)  # fmt: skip
def test_a_node_with_an_action_in_flight_is_left_alone(
    cluster: DesiredCluster, busy: str, state: NodeState
) -> None:
    before = replace(HEALTHY, reason="why")
    assert evaluate(cluster, [running(cluster)], before, busy={"db0": busy})[:3] == (
        NodeView(state, "why"),
        before,
        None,
    )


@pytest.mark.parametrize(
    ("containers", "everything", "reason"),
    [
        ([], False, "paused by the operator; no container"),
        (["running"], True, "the whole cluster is paused; container running"),
    ],
)
def test_a_paused_node_says_what_its_container_does(
    cluster: DesiredCluster, containers: list[str], everything: bool, reason: str
) -> None:
    controls = Controls(frozenset() if everything else frozenset({"db0"}), everything)
    found = [running(cluster)] if containers else []
    assert evaluate(cluster, found, HEALTHY, controls=controls)[:3] == (
        NodeView(NodeState.PAUSED, reason),
        HEALTHY,
        None,
    )


def test_a_node_whose_data_directory_is_another_s_is_blocked_with_why(cluster: DesiredCluster) -> None:
    why = "data directory marked for node db1"
    assert evaluate(cluster, [], None, identity_problems={"db0": why})[:3] == (
        NodeView(NodeState.BLOCKED, why),
        NodeRecord(),
        None,
    )


# --- spec changes ----------------------------------------------------------------------------------------------------


def test_a_stopped_container_of_another_spec_is_recreated_at_once_unless_meta_is_not_ready(
    cluster: DesiredCluster,
) -> None:
    node = cluster.node("db0")
    assert node is not None
    old = replace(dead(cluster), spec_hash="")
    reason = f"spec changed (unlabelled -> {node.spec_hash})"
    view, _rec, want, _, _ = evaluate(cluster, [old], HEALTHY)
    assert (view, want) == (
        NodeView(NodeState.STARTING, reason),
        Want(Action("recreate", "db0", "id-db0", reason)),
    )
    assert evaluate(cluster, [old], HEALTHY, meta_ready=False)[0] == NodeView(NodeState.BLOCKED, NOT_READY)


def test_a_running_container_of_another_spec_asks_for_a_rolling_recreate(cluster: DesiredCluster) -> None:
    node = cluster.node("db0")
    assert node is not None
    reason = f"spec changed (old -> {node.spec_hash})"
    view, _rec, want, _, _ = evaluate(
        cluster, [running(cluster, spec_hash="old")], HEALTHY, probes={"db0": probe(running(cluster))}
    )
    assert (view.state, view.reason) == (NodeState.HEALTHY, reason)
    # A running CeresDB node flushes its memtables before the stop.
    assert want == Want(
        Action("recreate", "db0", "id-db0", reason, by_choice=True, flush=True),
        None,
        NodeState.STOPPING,
        True,
    )


def test_a_running_container_of_another_spec_waits_for_meta_saying_both(cluster: DesiredCluster) -> None:
    """Its rolling recreate is still wanted; meanwhile it is judged as any running node while meta
    is not ready: blocked, nothing about its shards judged."""
    node = cluster.node("db0")
    assert node is not None
    c = running(cluster, spec_hash="old")
    view, _rec, want, _, _ = evaluate(cluster, [c], HEALTHY, meta_ready=False, probes={"db0": probe(c)})
    assert view == NodeView(NodeState.BLOCKED, f"spec changed (old -> {node.spec_hash}); {NOT_READY}")
    assert want is not None and want.rolling


OLD = "ceresdb 1.2.4"
"""Another release than the file's (ceresdb 1.2.2)."""
UPGRADE = "upgrade op-1: ceresdb 1.2.4 -> ceresdb 1.2.2"


def test_a_container_the_upgrade_asks_for_is_recreated_for_the_upgrade_s_reason(
    cluster: DesiredCluster,
) -> None:
    """Asked alone: a rolling recreate in the operation's order (asked); asked together with the
    others of its step: a recreate at once, its view stopping."""
    c = running(cluster, spec_hash="old", release=OLD)
    probes = {"db0": probe(c)}
    ask = Controls(upgrades={"db0": UpgradeAsk("upgrade op-1")})
    view, _rec, want, _, _ = evaluate(cluster, [c], HEALTHY, controls=ask, probes=probes)
    assert (view.state, view.reason) == (NodeState.HEALTHY, UPGRADE)
    assert want == Want(
        Action("recreate", "db0", "id-db0", UPGRADE, by_choice=True, flush=True),
        None,
        NodeState.STOPPING,
        True,
        True,
    )
    together = Controls(upgrades={"db0": UpgradeAsk("upgrade op-1", together=True)})
    view, _rec, want, _, _ = evaluate(cluster, [c], HEALTHY, controls=together, probes=probes)
    assert view == NodeView(NodeState.STOPPING, UPGRADE)
    assert want == Want(Action("recreate", "db0", "id-db0", UPGRADE, flush=True), None, NodeState.STOPPING)


def test_a_spec_change_within_the_file_s_release_is_a_plain_rolling_recreate_whatever_the_upgrade_asks(
    cluster: DesiredCluster,
) -> None:
    node = cluster.node("db0")
    assert node is not None
    c = running(cluster, spec_hash="old", release="ceresdb 1.2.2")
    together = Controls(upgrades={"db0": UpgradeAsk("upgrade op-1", together=True)})
    reason = f"spec changed (old -> {node.spec_hash})"
    view, _rec, want, _, _ = evaluate(cluster, [c], HEALTHY, controls=together, probes={"db0": probe(c)})
    assert (view.state, view.reason) == (NodeState.HEALTHY, reason)
    assert want == Want(
        Action("recreate", "db0", "id-db0", reason, by_choice=True, flush=True),
        None,
        NodeState.STOPPING,
        True,
    )


def test_a_container_of_another_release_not_asked_for_runs_and_starts_as_it_is_saying_the_upgrade_waits(
    cluster: DesiredCluster,
) -> None:
    waits = "runs ceresdb 1.2.4; the upgrade waits"
    c = running(cluster, spec_hash="old", release=OLD)
    view, _rec, want, _, _ = evaluate(cluster, [c], HEALTHY, probes={"db0": probe(c)})
    assert (view.state, view.reason, want) == (NodeState.HEALTHY, waits, None)
    stopped = replace(dead(cluster), spec_hash="old", release=OLD)
    handled = replace(HEALTHY, accounted_exit=EXIT, reason="x", healthy_since=None, next_restart_at=NOW + 5)
    assert evaluate(cluster, [stopped], handled)[:3] == (
        NodeView(NodeState.BACKOFF, f"x; {waits}", NOW + 5),
        handled,
        None,
    )
    view, _rec, want, _, _ = evaluate(cluster, [stopped], replace(handled, next_restart_at=None))
    assert (view, want) == (
        NodeView(NodeState.STARTING, f"x; {waits}"),
        Want(Action("start", "db0", "id-db0", "x", as_is=True), restart=True),
    )


# --- a running container ------------------------------------------------------------------------------------------------


def test_a_new_run_forgets_the_last_one_s_probes_and_clocks(cluster: DesiredCluster) -> None:
    before = NodeRecord(run_key="id-db0@earlier", healthy_since=5.0, probe_failures=2, last_probe_at=9.0,
                        next_restart_at=7.0, stop_counted_for="x", lease=Memory(reopen_since=1.0, progress=3, lost_since=2.0))  # fmt: skip
    _view, rec, _want, _, wakes = evaluate(cluster, [running(cluster)], before)
    assert rec == NodeRecord(run_key=RUN, run_seen_at=SEEN, lease=Memory())
    assert wakes == []  # found running long ago: its start_timeout is over, no wake-up for it


@pytest.mark.parametrize(
    "started_at", [None, WALL + timedelta(seconds=30)], ids=["no-start-time", "started-ahead-of-the-clock"]
)
def test_a_new_run_whose_start_cannot_be_dated_is_timed_from_its_first_sight(
    cluster: DesiredCluster, started_at: datetime | None
) -> None:
    """Without Docker's StartedAt (or with one ahead of this machine's clock) the run started now:
    its start_timeout runs from this cycle, and the cycle wakes at its end."""
    _view, rec, _want, _, wakes = evaluate(cluster, [running(cluster, started_at=started_at)], None)
    assert (rec.run_seen_at, wakes) == (NOW, [NOW + 120])


def test_a_first_good_probe_makes_it_healthy_and_clears_the_reason(cluster: DesiredCluster) -> None:
    c = running(cluster)
    before = NodeRecord(run_key=RUN, run_seen_at=NOW - 5, reason="found stopped", probe_failures=1)
    view, rec, want, _, _ = evaluate(cluster, [c], before, probes={"db0": probe(c)})
    assert rec == replace(before, healthy_since=NOW, reason=None, probe_failures=0, last_probe_at=NOW)
    assert (view.state, view.reason, view.available, want) == (NodeState.HEALTHY, None, True, None)
    assert view.lease == LeaseStatus(None, (), "no shards assigned yet")


def test_a_probe_of_another_run_or_not_newer_is_not_counted(cluster: DesiredCluster) -> None:
    c = running(cluster)
    before = NodeRecord(run_key=RUN, run_seen_at=NOW - 5, last_probe_at=NOW - 1)
    stale = replace(probe(c, ok=False), run_id="id-db0@earlier")  # newer, but of the previous run
    assert evaluate(cluster, [c], before, probes={"db0": stale})[1] == before
    same = probe(c, ok=False, at=NOW - 1)  # not newer than the last one counted
    assert evaluate(cluster, [c], before, probes={"db0": same})[1] == before


def test_a_starting_node_says_its_failing_probe_and_wakes_at_its_deadline(cluster: DesiredCluster) -> None:
    c = running(cluster)
    before = NodeRecord(run_key=RUN, run_seen_at=NOW - 5)
    view, rec, want, _, wakes = evaluate(cluster, [c], before, probes={"db0": probe(c, ok=False)})
    assert (view, want) == (NodeView(NodeState.STARTING, "GET /: timed out"), None)
    assert (rec.probe_failures, rec.last_probe_at, wakes) == (1, NOW, [NOW - 5 + 120])
    assert evaluate(cluster, [c], before, meta_ready=False)[0] == NodeView(NodeState.BLOCKED, NOT_READY)


def test_a_starting_node_at_its_deadline_with_fewer_failed_probes_than_the_threshold_waits_for_them(
    cluster: DesiredCluster,
) -> None:
    """At start_timeout it is judged like any running node: one failed probe is not enough, and
    its deadline, now, is no longer a time to wake at."""
    before = NodeRecord(run_key=RUN, run_seen_at=NOW - 120, probe_failures=1, last_probe_at=NOW - 1)
    view, _rec, want, _, wakes = evaluate(cluster, [running(cluster)], before)
    assert (view, want, wakes) == (NodeView(NodeState.STARTING, None), None, [])


def test_not_healthy_within_start_timeout_is_stopped_as_such(cluster: DesiredCluster) -> None:
    c = running(cluster)
    before = NodeRecord(run_key=RUN, run_seen_at=NOW - 120, probe_failures=2, last_probe_at=NOW - 1)
    reason = "not healthy within 120s: GET /: timed out"
    view, _rec, want, _, wakes = evaluate(cluster, [c], before, probes={"db0": probe(c, ok=False)})
    assert view == NodeView(NodeState.UNHEALTHY, reason) and wakes == []
    assert want == Want(
        Action("stop", "db0", "id-db0", reason, by_choice=True), "start_timeout", NodeState.UNHEALTHY
    )
    no_answer = NodeRecord(run_key=RUN, run_seen_at=NOW - 200, probe_failures=3)
    assert evaluate(cluster, [c], no_answer)[0].reason == "not healthy within 120s: no probe answer"


def test_a_healthy_node_that_fails_its_probes_is_unhealthy_with_its_lease(cluster: DesiredCluster) -> None:
    c = running(cluster)
    before = replace(HEALTHY, probe_failures=2)
    reason = "unhealthy: 3 failed probes: GET /: timed out"
    view, _rec, want, _, _ = evaluate(cluster, [c], before, probes={"db0": probe(c, ok=False)})
    assert view == NodeView(
        NodeState.UNHEALTHY, reason, lease=LeaseStatus(None, (), "no shards assigned yet")
    )
    assert want == Want(
        Action("stop", "db0", "id-db0", reason, by_choice=True), "unhealthy", NodeState.UNHEALTHY
    )
    blocked = evaluate(cluster, [c], before, meta_ready=False, probes={"db0": probe(c, ok=False)})
    assert blocked[:3] == (
        NodeView(NodeState.BLOCKED, f"{NOT_READY}; 3 failed probes: GET /: timed out"),
        blocked[1],
        None,
    )


def test_a_healthy_node_without_a_probe_of_its_run_is_unhealthy_after_its_failed_probes(
    cluster: DesiredCluster,
) -> None:
    """Three failed probes counted, and no answer of this run in the observation: the view says
    so rather than quoting an answer."""
    view, _rec, want, _, _ = evaluate(cluster, [running(cluster)], replace(HEALTHY, probe_failures=3))
    reason = "unhealthy: 3 failed probes: ?"
    assert view == NodeView(
        NodeState.UNHEALTHY, reason, lease=LeaseStatus(None, (), "no shards assigned yet")
    )
    assert want is not None and want.action.reason == reason


@pytest.mark.parametrize(
    ("leases", "view"),
    [
        (LeaseView(NOW, WALL),
         NodeView(NodeState.HEALTHY, "GET /: timed out", available=True,
                  lease=LeaseStatus(None, (), "no shards assigned yet"))),
        (LeaseView(NOW, WALL, error="etcd: timed out"),
         NodeView(NodeState.HEALTHY, "GET /: timed out; lease unknown: etcd: timed out",
                  lease=LeaseStatus(None, (), "etcd: timed out"))),
    ],
    ids=["keeps-its-shards", "lease-unknown"],
)  # fmt: skip
def test_a_healthy_ceresdb_node_says_a_failing_probe_below_the_threshold(
    cluster: DesiredCluster, leases: LeaseView, view: NodeView
) -> None:
    c = running(cluster)
    got, rec, want, _, _ = evaluate(cluster, [c], HEALTHY, probes={"db0": probe(c, ok=False)}, leases=leases)
    assert (got, rec.probe_failures, want) == (view, 1, None)


def test_a_healthy_ceresdb_node_is_blocked_while_meta_is_not_ready_and_its_lease_clocks_stop(
    cluster: DesiredCluster,
) -> None:
    """Nothing about its shards is judged without meta: the reopen and loss clocks start over
    once meta is back (what it has seen of its leases and its progress are kept)."""
    c = running(cluster)
    lease = Memory(first_seen=((7, 5.0),), reopen_since=5.0, progress=2, lost_since=9.0)
    view, rec, want, _, _ = evaluate(
        cluster, [c], replace(HEALTHY, lease=lease), meta_ready=False, probes={"db0": probe(c)}
    )
    assert (view, want) == (NodeView(NodeState.BLOCKED, NOT_READY), None)
    assert rec.lease == Memory(first_seen=((7, 5.0),), progress=2)


def test_a_meta_member_says_its_failing_probe_and_after_three_is_unhealthy_without_a_lease(
    cluster: DesiredCluster,
) -> None:
    meta = container(cluster, "meta0")
    before = NodeRecord(
        run_key=meta.run_key, run_seen_at=SEEN, healthy_since=NOW - 300, last_probe_at=NOW - 1
    )
    failing = {"probes": {"meta0": probe(meta, ok=False)}}
    sick = {"meta0": MetaMemberProbe(probe(meta), False)}
    assert evaluate(cluster, [meta], before, node="meta0", meta=sick, **failing)[0] == NodeView(
        NodeState.HEALTHY, "GET /: timed out; etcd not healthy"
    )
    reason = "unhealthy: 3 failed probes: GET /: timed out"
    view, _rec, want, _, _ = evaluate(
        cluster, [meta], replace(before, probe_failures=2), node="meta0", **failing
    )
    assert view == NodeView(NodeState.UNHEALTHY, reason)  # no shards, no lease status
    assert want == Want(
        Action("stop", "meta0", "id-meta0", reason, by_choice=True), "unhealthy", NodeState.UNHEALTHY
    )


def test_a_meta_member_is_available_only_with_its_etcd_healthy(cluster: DesiredCluster) -> None:
    meta = container(cluster, "meta0")
    before = NodeRecord(
        run_key=meta.run_key, run_seen_at=SEEN, healthy_since=NOW - 300, last_probe_at=NOW - 1
    )
    ok = evaluate(cluster, [meta], before, node="meta0", probes={"meta0": probe(meta)})
    assert ok[0] == NodeView(NodeState.HEALTHY, None, available=True)
    sick = {"meta0": MetaMemberProbe(probe(meta), False)}
    assert evaluate(cluster, [meta], before, node="meta0", meta=sick, probes={"meta0": probe(meta)})[
        0
    ] == NodeView(NodeState.HEALTHY, "etcd not healthy")


LOCKS = {0: ShardLock("127.0.0.1:8831", 7), 2: ShardLock("127.0.0.1:8831", 7)}


@pytest.mark.parametrize(
    ("leases", "rec_lease", "view"),
    [
        (LeaseView(NOW, WALL, {"127.0.0.1:8831": (0, 2)}, LOCKS), Memory(),
         NodeView(NodeState.HEALTHY, None, available=True, lease=LeaseStatus(True, (0, 2), None))),
        (LeaseView(NOW, WALL, error="etcd: timed out"), Memory(),
         NodeView(NodeState.HEALTHY, "lease unknown: etcd: timed out", lease=LeaseStatus(None, (), "etcd: timed out"))),
        (LeaseView(NOW, WALL, {"127.0.0.1:8831": (0, 2)}, {0: ShardLock("127.0.0.1:8831", 7), 2: ShardLock("127.0.0.2:1", 9)}), Memory(),
         NodeView(NodeState.REOPENING, "shards 2 locked by another endpoint",
                  lease=LeaseStatus(False, (0,), "shards 2 locked by another endpoint"))),
        (LeaseView(NOW, WALL, {"127.0.0.1:8831": (0, 2)}, {}), Memory(reopen_since=0.0, lost_since=NOW - 60),
         NodeView(NodeState.LEASE_LOST, "lease lost for 60s: shards 0,2 not reopened although CeresMeta 1.2.2 should have by now",
                  lease=LeaseStatus(False, (), "shards 0,2 not reopened although CeresMeta 1.2.2 should have by now"))),
        (LeaseView(NOW, WALL, {"127.0.0.1:8831": (0, 2)}, {}), Memory(reopen_since=0.0),
         NodeView(NodeState.LEASE_LOST, "shards 0,2 not reopened although CeresMeta 1.2.2 should have by now; "
                  "restart after lease_grace (60s)",
                  lease=LeaseStatus(False, (), "shards 0,2 not reopened although CeresMeta 1.2.2 should have by now"))),
    ],
    ids=["held", "unknown", "reopening", "lost-for-the-grace", "lost"],
)  # fmt: skip
def test_a_healthy_ceresdb_node_is_judged_by_its_shards(
    cluster: DesiredCluster, leases: LeaseView, rec_lease: Memory, view: NodeView
) -> None:
    c = running(cluster)
    got, rec, want, _, _ = evaluate(
        cluster, [c], replace(HEALTHY, lease=rec_lease), probes={"db0": probe(c)}, leases=leases
    )
    assert got == view
    if view.state is NodeState.LEASE_LOST and view.reason and view.reason.startswith("lease lost"):
        assert want == Want(
            Action("stop", "db0", "id-db0", view.reason, by_choice=True), "lease_lost", NodeState.LEASE_LOST
        )
    else:
        assert want is None
    if view.available:
        assert rec.lease.first_seen == ((7, WALL.timestamp()),)


def test_shards_locked_by_the_previous_run_or_locked_but_not_open_are_waited_for(
    cluster: DesiredCluster,
) -> None:
    """A lock whose lease was first seen before the container started is the previous run's (its
    lease has not expired yet); a shard locked by this run that the node's own `/debug/shards`
    says is still opening is not held yet either."""
    c = running(cluster)
    assigned = {"127.0.0.1:8831": (0, 2)}
    before_start = datetime(2025, 12, 31, tzinfo=UTC).timestamp()
    previous = replace(HEALTHY, lease=Memory(first_seen=((7, before_start),)))
    view = evaluate(
        cluster, [c], previous, probes={"db0": probe(c)}, leases=LeaseView(NOW, WALL, assigned, LOCKS)
    )[0]
    detail = "shards 0,2 still locked by the previous run until its lease expires"
    assert view == NodeView(NodeState.REOPENING, detail, lease=LeaseStatus(False, (), detail))
    opening = replace(probe(c), shards={0: "Opening", 2: "Ready"})
    view = evaluate(
        cluster, [c], HEALTHY, probes={"db0": opening}, leases=LeaseView(NOW, WALL, assigned, LOCKS)
    )[0]
    detail = "shards 0 Opening: locked, not open yet (CeresMeta retries a shard whose open failed)"
    assert view == NodeView(NodeState.REOPENING, detail, lease=LeaseStatus(False, (0, 2), detail))


def test_a_planned_restart_of_a_healthy_node_is_a_stop_by_choice(cluster: DesiredCluster) -> None:
    c = running(cluster)
    controls = Controls(restarts={"db0": "planned restart (op-1)"})
    _view, _rec, want, _, _ = evaluate(cluster, [c], HEALTHY, controls=controls, probes={"db0": probe(c)})
    planned = Action(
        "restart", "db0", "id-db0", "planned restart (op-1)", by_choice=True, flush=True
    )  # CeresDB: flushed first
    assert want == Want(planned, None, NodeState.STOPPING)


def test_a_stopped_ceresdb_node_waits_for_meta_saying_why(cluster: DesiredCluster) -> None:
    handled = replace(HEALTHY, accounted_exit=EXIT, reason=KILLED)
    assert evaluate(cluster, [dead(cluster)], handled, meta_ready=False)[0] == NodeView(
        NodeState.BLOCKED, f"{NOT_READY}; {KILLED}"
    )
    quiet = replace(handled, reason=None)
    assert evaluate(cluster, [dead(cluster)], quiet, meta_ready=False)[0] == NodeView(
        NodeState.BLOCKED, f"{NOT_READY}; stopped"
    )


def test_a_stopped_node_with_no_reason_is_started_as_stopped(cluster: DesiredCluster) -> None:
    """An exit handled earlier whose reason was cleared: the start still says why it is needed."""
    handled = replace(HEALTHY, accounted_exit=EXIT, healthy_since=None)
    view, _rec, want, _, _ = evaluate(cluster, [dead(cluster)], handled)
    assert (view, want) == (NodeView(NodeState.STARTING, None), start("stopped", again=True))


@pytest.mark.parametrize(
    ("healthy_for", "count", "wakes"),
    [(600.0, Count(2, (NOW - 700, NOW - 650)), []), (300.0, Count(1, (NOW - 400,)), [NOW + 300])],
    ids=["healthy-for-backoff-reset", "not-yet"],
)
def test_healthy_for_backoff_reset_the_count_starts_over_and_until_then_the_cycle_wakes_for_it(
    cluster: DesiredCluster, healthy_for: float, count: Count, wakes: list[float]
) -> None:
    """backoff_reset is 600 s: healthy that long, the failures are forgotten (the next one waits
    nothing); healthy for less, the planner is woken when the count is due to start over."""
    c = running(cluster)
    before = replace(HEALTHY, healthy_since=NOW - healthy_for, count=count)
    _view, rec, _want, _, got = evaluate(cluster, [c], before, probes={"db0": probe(c)})
    assert (rec.count, got) == (Count() if not wakes else count, wakes)


# --- a CeresDB start waits for a fresh reading of meta's leader -----------------------------------------------------


def leader(age: float | None) -> dict[str, MetaLeader | None]:
    """The observation's reading of meta's leader, `age` seconds old (None: never read)."""
    return {"leader": None if age is None else MetaLeader(NOW - age, "meta0", True, "")}


def test_a_ceresdb_node_is_created_on_a_reading_of_meta_s_leader_at_most_a_second_old(
    cluster: DesiredCluster,
) -> None:
    assert evaluate(cluster, [], None, **leader(None))[:3] == (
        NodeView(NodeState.STARTING, "waiting for a reading of meta's leader"),
        NodeRecord(),
        None,
    )
    assert evaluate(cluster, [], None, **leader(1.5))[0] == NodeView(
        NodeState.STARTING, "waiting for a fresh reading of meta's leader (the last is 1.5s old)"
    )
    created = Want(Action("create", "db0", None, "not created yet"))
    assert evaluate(cluster, [], None, **leader(1.0))[2] == created  # exactly LEADER_FRESH_S: fresh


def test_a_start_waiting_for_the_leader_still_says_why_it_is_needed(cluster: DesiredCluster) -> None:
    """A stopped container (with no reason kept: 'stopped') and one of another spec, to be
    recreated: each says what it waits for after why it is to start."""
    stale = "waiting for a fresh reading of meta's leader (the last is 5.0s old)"
    handled = replace(HEALTHY, accounted_exit=EXIT, healthy_since=None)
    assert evaluate(cluster, [dead(cluster)], handled, **leader(5.0))[:3] == (
        NodeView(NodeState.STARTING, f"stopped; {stale}"),
        handled,
        None,
    )
    node = cluster.node("db0")
    assert node is not None
    old = replace(dead(cluster), spec_hash="")
    view, _rec, want, _, _ = evaluate(cluster, [old], handled, **leader(5.0))
    assert (view, want) == (
        NodeView(NodeState.STARTING, f"spec changed (unlabelled -> {node.spec_hash}); {stale}"),
        None,
    )


def test_a_remote_node_is_only_shown(tmp_path: Path) -> None:
    remote = build(tmp_path, local=False)
    assert evaluate(remote, [], None)[:3] == (
        NodeView(NodeState.REMOTE, "runs on 127.0.0.1"),
        NodeRecord(),
        None,
    )
