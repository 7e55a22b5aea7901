"""planning.plan() decided by table: desired x observed x memory x time x budget. No Docker, no mocks."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ceres_supervisor.decisions import planning
from ceres_supervisor.decisions.backoff import Count
from ceres_supervisor.decisions.nodes import LEADER_FRESH_S
from ceres_supervisor.decisions.planning import Budget, Controls, NodeRecord, NodeState, Policy
from ceres_supervisor.decisions.targets import probe_targets
from ceres_supervisor.desired import containers, loading
from ceres_supervisor.model.observed import (
    LeaseView,
    MetaLeader,
    MetaMemberProbe,
    Observation,
    ObservedContainer,
    ProbeResult,
    ShardLock,
)

from .conftest import BASE

NOW = 1000.0
WALL = datetime(2026, 11, 26, tzinfo=UTC)
POLICY = Policy(
    failure_threshold=3,
    start_timeout_s=120,
    lease_grace_s=60,
    backoff_initial_s=1,
    backoff_max_s=60,
    backoff_reset_s=600,
    crashloop_failures=5,
    crashloop_window_s=600,
)
THREE = (
    BASE
    + """
[[ceresdb.nodes]]
name = "db2"
host = "127.0.0.1"
grpc_port = 8833
http_port = 5442
mysql_port = 3309
"""
)
META3 = THREE.replace(
    '[[ceresdb.nodes]]\nname = "db0"',
    '[[meta.nodes]]\nname = "meta1"\nhost = "127.0.0.1"\n'
    'client_port = 12379\npeer_port = 12380\nhttp_port = 8081\n\n[[meta.nodes]]\nname = "meta2"\n'
    'host = "127.0.0.1"\nclient_port = 22379\npeer_port = 22380\nhttp_port = 8082\n\n'
    '[[ceresdb.nodes]]\nname = "db0"',
    1,
)


def build(tmp_path: Path, text: str = BASE, local: bool = True) -> containers.DesiredCluster:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return containers.build(loading.load(path).spec, lambda _ref: "", is_local=lambda host: local)


@pytest.fixture
def cluster(tmp_path: Path) -> containers.DesiredCluster:
    return build(tmp_path)


@pytest.fixture
def big(tmp_path: Path) -> containers.DesiredCluster:
    """Three meta members and three CeresDB nodes."""
    return build(tmp_path, META3)


def container(
    cluster: containers.DesiredCluster,
    node: str,
    state: str = "running",
    *,
    spec_hash: str | None = None,
    exit_code: int | None = None,
    started: int = 1,
    finished: int = 2,
) -> ObservedContainer:
    n = cluster.node(node)
    assert n is not None
    return ObservedContainer(
        id=f"id-{node}",
        name=f"ceres-x-{node}",
        node=node,
        role=n.role,
        spec_hash=n.spec_hash if spec_hash is None else spec_hash,
        state=state,
        image="img",
        exit_code=exit_code,
        started_at=datetime(2026, 1, 1, 0, 0, started, tzinfo=UTC),
        finished_at=None if state == "running" else datetime(2026, 1, 1, 0, 0, finished, tzinfo=UTC),
    )


def probe(c: ObservedContainer, ok: bool = True, at: float = NOW) -> ProbeResult:
    return ProbeResult(ok, "GET / 200" if ok else "GET /: timed out", at, WALL, 0.001, c.run_key)


def observation(
    cluster: containers.DesiredCluster,
    containers: list[ObservedContainer],
    *,
    meta_ready: bool = True,
    probes: dict[str, ProbeResult] | None = None,
    leases: LeaseView | None = None,
    busy: dict[str, str] | None = None,
    failed: dict[str, tuple[str, str]] | None = None,
    restarted: frozenset[str] = frozenset(),
    leader_at: float = NOW,
) -> Observation:
    alive = ProbeResult(meta_ready, "GET /api/v1/healthCheck 200", NOW, WALL)
    members = {m.name: MetaMemberProbe(alive, meta_ready) for m in cluster.meta}
    leader = MetaLeader(leader_at, cluster.meta[0].name if meta_ready else None, meta_ready, "")
    return Observation(
        at=NOW,
        wall=WALL,
        containers={c.node: c for c in containers},
        orphans=(),
        engine_error=None,
        probes=probes or {},
        meta=members,
        leader=leader,
        leases=LeaseView(NOW, WALL) if leases is None else leases,
        busy=busy or {},
        failed_actions=failed or {},
        engine_restart_exits=restarted,
    )


def plan(
    cluster: containers.DesiredCluster,
    obs: Observation,
    records: dict[str, NodeRecord] | None = None,
    now: float = NOW,
    jitter: float = 0.0,
    policy: Policy = POLICY,
    budget: Budget | None = None,
    controls: Controls | None = None,
) -> planning.Plan:
    return planning.plan(cluster, obs, records or {}, now, lambda: jitter, policy, budget, controls)


def actions(p: planning.Plan) -> list[tuple[str, str]]:
    return [(a.kind, a.node) for a in p.actions]


def running(cluster: containers.DesiredCluster) -> tuple[list[ObservedContainer], dict[str, ProbeResult]]:
    cs = [container(cluster, n.name) for n in cluster.nodes]
    return cs, {c.node: probe(c) for c in cs}


def healthy_records(cs: list[ObservedContainer], **changes: object) -> dict[str, NodeRecord]:
    return {
        c.node: NodeRecord(run_key=c.run_key, healthy_since=NOW - 300, last_probe_at=NOW - 1, **changes)  # type: ignore[arg-type]
        for c in cs
    }


def failing(
    cluster: containers.DesiredCluster, *names: str
) -> tuple[list[ObservedContainer], dict[str, ProbeResult], dict[str, NodeRecord]]:
    """Everything running and healthy so far; `names` have failed two probes and fail a third now."""
    cs, probes = running(cluster)
    records = healthy_records(cs)
    for c in cs:
        if c.node in names:
            probes[c.node] = probe(c, ok=False)
            records[c.node] = replace(records[c.node], probe_failures=2)
    return cs, probes, records


# --- ordering and creation ------------------------------------------------------------------------


def test_cold_start_creates_meta_and_blocks_ceresdb(cluster: containers.DesiredCluster) -> None:
    p = plan(cluster, observation(cluster, [], meta_ready=False))
    assert actions(p) == [("create", "meta0")]
    assert p.views["db0"].state is NodeState.BLOCKED and p.views["db1"].state is NodeState.BLOCKED
    assert p.cluster_state is planning.ClusterState.STARTING


def test_ceresdb_created_once_meta_is_ready(cluster: containers.DesiredCluster) -> None:
    meta = container(cluster, "meta0")
    p = plan(cluster, observation(cluster, [meta], probes={"meta0": probe(meta)}))
    assert actions(p) == [("create", "db0"), ("create", "db1")]


def test_meta_is_ready_only_when_the_leader_lists_the_cluster(cluster: containers.DesiredCluster) -> None:
    meta = container(cluster, "meta0")
    obs = observation(cluster, [meta], probes={"meta0": probe(meta)})
    for leader, detail in [
        (None, "no meta leader yet (not read yet)"),
        (
            MetaLeader(NOW, None, False, "no leader key /members/leader yet"),
            "no meta leader yet (no leader key /members/leader yet)",
        ),
        (MetaLeader(NOW, "meta0", False, ""), "meta leader meta0 does not list the cluster yet"),
    ]:
        p = plan(cluster, replace(obs, leader=leader))
        assert actions(p) == [] and p.meta_detail == detail
        assert p.views["db0"].state is NodeState.BLOCKED and p.views["db0"].reason == detail


def test_ceresdb_starts_wait_for_a_fresh_leader_reading(cluster: containers.DesiredCluster) -> None:
    """A CeresDB node creates its schema through meta's leader while it starts and exits 1 when
    that fails: no create, start or recreate of a stopped node on a reading older than a second."""
    meta = container(cluster, "meta0")
    old = observation(cluster, [meta], probes={"meta0": probe(meta)})
    later = NOW + LEADER_FRESH_S + 0.5
    p = plan(cluster, old, now=later)
    assert actions(p) == [] and p.awaiting_leader
    assert p.views["db0"].reason == "waiting for a fresh reading of meta's leader (the last is 1.5s old)"
    assert [t.fast for t in probe_targets(cluster, p, old.containers) if t.kind == "leader"] == [True]

    fresh = observation(cluster, [meta], probes={"meta0": probe(meta)}, leader_at=later)
    p = plan(cluster, fresh, now=later)
    assert actions(p) == [("create", "db0"), ("create", "db1")] and not p.awaiting_leader

    stopped = [
        meta,
        container(cluster, "db0", "exited", exit_code=0),
        container(cluster, "db1", "exited", spec_hash="old"),
    ]
    p = plan(cluster, replace(old, containers={c.node: c for c in stopped}), now=later)
    assert actions(p) == [] and {p.views["db0"].state, p.views["db1"].state} == {NodeState.STARTING}
    p = plan(cluster, replace(fresh, containers={c.node: c for c in stopped}), now=later)
    assert actions(p) == [("start", "db0"), ("recreate", "db1")]


def test_a_meta_member_whose_stop_is_in_flight_is_not_ready_whatever_it_answered(
    cluster: containers.DesiredCluster,
) -> None:
    """Docker has not stopped meta0 yet and its probes still answer (a paused member is thawed
    by its stop, and answers for a moment): CeresDB starts on it would find no meta a second
    later. Seen in a chaos run: db0 and db1 started 0.8 s after meta0's SIGTERM, and both died."""
    meta = container(cluster, "meta0")
    stopped = [meta, container(cluster, "db0", "exited", exit_code=137), container(cluster, "db1", "exited")]
    records = {"db0": NodeRecord(run_key="old"), "db1": NodeRecord(run_key="old")}
    for kind in ("stop", "restart", "recreate", "remove"):
        p = plan(
            cluster,
            observation(cluster, stopped, probes={"meta0": probe(meta)}, busy={"meta0": kind}),
            records,
        )
        assert actions(p) == [], kind
        assert not p.meta_ready and p.meta_detail == "meta members being stopped: meta0", kind
        assert p.views["db0"].state is NodeState.BLOCKED, kind
    p = plan(
        cluster,
        observation(cluster, stopped, probes={"meta0": probe(meta)}, busy={"meta0": "start"}),
        records,
    )
    assert p.meta_ready, "a member being started was judged by its probes of the new run (not probed yet)"


def test_no_ceresdb_container_is_started_in_the_plan_that_stops_a_meta_member(
    big: containers.DesiredCluster,
) -> None:
    """A planned restart of meta0 granted, db0 found crashed in the same pass: db0 waits for the
    next pass (where meta0's stop is in flight), and its restart is counted once, when it goes."""
    cs, probes = running(big)
    records = healthy_records(cs)
    crashed = container(big, "db0", "exited", exit_code=137, started=1, finished=2)
    observed = [crashed if c.node == "db0" else c for c in cs]
    probes.pop("db0")
    restart = Controls(restarts={"meta0": "planned restart (op-1)"})
    p = plan(big, observation(big, observed, probes=probes), records, controls=restart)
    assert actions(p) == [("restart", "meta0")]
    assert p.views["db0"].state is NodeState.BLOCKED
    assert p.views["db0"].reason == "meta members being stopped: meta0"
    assert p.records["db0"].restarts == records["db0"].restarts and p.records["db0"].failures == 1
    nothing_asked = plan(big, observation(big, observed, probes=probes), p.records)
    assert actions(nothing_asked) == [("start", "db0")]
    assert nothing_asked.records["db0"].restarts == records["db0"].restarts + 1
    assert nothing_asked.records["db0"].failures == 1, "the crash is counted once"


def test_all_meta_members_start_together(big: containers.DesiredCluster) -> None:
    p = plan(big, observation(big, [], meta_ready=False))
    assert actions(p) == [("create", "meta0"), ("create", "meta1"), ("create", "meta2")]


def test_healthy_adopted_cluster_is_left_alone(cluster: containers.DesiredCluster) -> None:
    cs, probes = running(cluster)
    p = plan(cluster, observation(cluster, cs, probes=probes))
    assert actions(p) == []
    assert {v.state for v in p.views.values()} == {NodeState.HEALTHY}
    assert p.cluster_state is planning.ClusterState.HEALTHY
    assert p.releasable == {"meta0", "db0", "db1"}


def test_remote_nodes_are_never_acted_on(tmp_path: Path) -> None:
    remote = build(tmp_path, local=False)
    p = plan(remote, observation(remote, [], meta_ready=False))
    assert actions(p) == []
    assert {v.state for v in p.views.values()} == {NodeState.REMOTE}


# --- failures and backoff -------------------------------------------------------------------------


def test_first_unexpected_exit_restarts_at_once(cluster: containers.DesiredCluster) -> None:
    cs, probes = running(cluster)
    first = plan(cluster, observation(cluster, cs, probes=probes))
    dead = container(cluster, "db0", "exited", exit_code=137)
    p = plan(cluster, observation(cluster, [cs[0], dead, cs[2]], probes=probes), first.records)
    assert actions(p) == [("start", "db0")]
    assert p.records["db0"].failures == 1 and p.records["db0"].restarts == 1
    assert p.records["db0"].last_exit is not None and p.records["db0"].last_exit.code == 137
    assert [(n.node, n.type, n.reason) for n in p.notes] == [("db0", "died", "exit 137 (SIGKILL)")]


def test_meta_exit_code_0_is_a_failure(cluster: containers.DesiredCluster) -> None:
    cs, probes = running(cluster)
    first = plan(cluster, observation(cluster, cs, probes=probes))
    dead = container(cluster, "meta0", "exited", exit_code=0)
    p = plan(cluster, observation(cluster, [dead, cs[1], cs[2]], meta_ready=False), first.records)
    assert ("start", "meta0") in actions(p)
    assert p.notes[0].reason == "exit 0 (CeresMeta exits 0 when etcd fails)"


def test_second_failure_waits_with_backoff_then_starts(cluster: containers.DesiredCluster) -> None:
    cs, probes = running(cluster)
    records = {"db0": NodeRecord(count=Count(1, (NOW - 5,)), restarts=1, run_key="old")}
    dead = container(cluster, "db0", "exited", exit_code=1)
    p = plan(cluster, observation(cluster, [cs[0], dead, cs[2]], probes=probes), records, jitter=0.1)
    assert actions(p) == []
    assert p.views["db0"].state is NodeState.BACKOFF
    assert p.views["db0"].next_restart_at == pytest.approx(NOW + 1.1)
    assert p.next_wake_at == pytest.approx(NOW + 1.1)
    again = observation(cluster, [cs[0], dead, cs[2]], probes=probes, leader_at=NOW + 1.2)
    later = plan(cluster, again, p.records, now=NOW + 1.2)
    assert actions(later) == [("start", "db0")]
    assert later.records["db0"].failures == 2  # the same exit is not counted twice


def test_crashloop_at_the_fifth_failure_waits_backoff_max(cluster: containers.DesiredCluster) -> None:
    cs, probes = running(cluster)
    records = {"db0": NodeRecord(count=Count(4, tuple(NOW - 60 * i for i in range(1, 5))), run_key="old")}
    dead = container(cluster, "db0", "exited", exit_code=1)
    p = plan(cluster, observation(cluster, [cs[0], dead, cs[2]], probes=probes), records)
    assert p.records["db0"].crashloop
    assert p.views["db0"].state is NodeState.CRASHLOOP
    assert p.views["db0"].next_restart_at == pytest.approx(NOW + 60)
    assert [n.type for n in p.notes] == ["died", "crashloop"]
    assert p.cluster_state is planning.ClusterState.DEGRADED


def test_a_crash_after_a_long_healthy_run_restarts_at_once(cluster: containers.DesiredCluster) -> None:
    """The reset is checked before the new failure is counted (healthy 601 s, backoff_reset 10m)."""
    cs, probes = running(cluster)
    records = healthy_records(cs)
    records["db0"] = replace(records["db0"], count=Count(4, (NOW - 700,)), healthy_since=NOW - 601)
    dead = container(cluster, "db0", "exited", exit_code=137, started=1, finished=3)
    p = plan(cluster, observation(cluster, [cs[0], dead, cs[2]], probes=probes), records)
    assert actions(p) == [("start", "db0")] and p.records["db0"].failures == 1


def test_exit_the_supervisor_caused_is_not_a_failure(cluster: containers.DesiredCluster) -> None:
    cs, probes = running(cluster)
    records = {
        "db0": NodeRecord(
            count=Count(1, (NOW,)), expected_exit="id-db0", run_key="old", next_restart_at=NOW + 5
        )
    }
    p = plan(
        cluster,
        observation(cluster, [cs[0], container(cluster, "db0", "exited", exit_code=0), cs[2]], probes=probes),
        records,
    )
    assert p.notes == () and p.records["db0"].failures == 1
    assert p.views["db0"].state is NodeState.BACKOFF


def test_exited_container_found_at_start_is_started_without_a_failure(
    cluster: containers.DesiredCluster,
) -> None:
    cs, probes = running(cluster)
    p = plan(
        cluster,
        observation(cluster, [cs[0], container(cluster, "db0", "exited", exit_code=0), cs[2]], probes=probes),
    )
    assert actions(p) == [("start", "db0")]
    assert p.notes == () and p.records["db0"].restarts == 0


def test_failed_create_counts_as_a_failure(cluster: containers.DesiredCluster) -> None:
    meta = container(cluster, "meta0")
    p = plan(
        cluster,
        observation(
            cluster, [meta], probes={"meta0": probe(meta)}, failed={"db0": ("create", "image missing")}
        ),
        {"db0": NodeRecord(count=Count(1, (NOW,)))},
    )
    assert ("create", "db0") not in actions(p)
    assert p.views["db0"].state is NodeState.BACKOFF and p.views["db0"].reason == "image missing"
    assert p.records["db0"].failures == 2


def test_a_failed_stop_counts_nothing_more_and_the_next_crash_counts(
    cluster: containers.DesiredCluster,
) -> None:
    cs, probes, records = failing(cluster, "db0")
    p = plan(cluster, observation(cluster, cs, probes=probes), records)
    assert actions(p) == [("stop", "db0")] and p.records["db0"].failures == 1
    assert p.records["db0"].expected_exit == "id-db0"
    # The stop failed: the container still runs, nothing more is counted and the mark is gone.
    probes["db0"] = probe(cs[1], ok=False, at=NOW + 1)
    p2 = plan(
        cluster,
        observation(cluster, cs, probes=probes, failed={"db0": ("stop", "Docker timed out")}),
        p.records,
        now=NOW + 1,
    )
    assert (
        p2.records["db0"].failures == 1 and p2.records["db0"].expected_exit == "id-db0"
    )  # stop retried at once
    assert actions(p2) == [("stop", "db0")]
    assert [n.type for n in p2.notes] == []
    # ... and if the container then crashes for real, that exit is a failure.
    p3 = plan(
        cluster,
        observation(cluster, cs, probes=probes, failed={"db0": ("stop", "Docker timed out")}),
        p.records,
        now=NOW + 1,
    )
    crashed = container(cluster, "db0", "exited", exit_code=137)
    rec = replace(p3.records["db0"], expected_exit=None)
    p4 = plan(
        cluster,
        observation(cluster, [cs[0], crashed, cs[2]], probes=probes),
        {**p3.records, "db0": rec},
        now=NOW + 2,
    )
    assert p4.records["db0"].failures == 2 and [n.type for n in p4.notes] == ["died"]


def test_the_failed_stop_clears_the_expected_exit_mark(cluster: containers.DesiredCluster) -> None:
    cs, probes, records = failing(cluster, "db0")
    records["db0"] = replace(
        records["db0"], expected_exit="id-db0", stop_counted_for=cs[1].run_key, count=Count(1, (NOW,))
    )
    probes["db0"] = probe(cs[1], ok=True)
    records["db0"] = replace(records["db0"], probe_failures=0)
    p = plan(cluster, observation(cluster, cs, probes=probes, failed={"db0": ("stop", "timed out")}), records)
    assert p.records["db0"].expected_exit is None and actions(p) == []
    crashed = container(cluster, "db0", "exited", exit_code=137)
    p2 = plan(cluster, observation(cluster, [cs[0], crashed, cs[2]], probes=probes), p.records, now=NOW + 1)
    assert p2.records["db0"].failures == 2 and [n.type for n in p2.notes] == ["died"]
    assert p2.views["db0"].state is NodeState.BACKOFF  # the second failure waits backoff_initial


def test_a_refused_slot_waits_without_counting(cluster: containers.DesiredCluster) -> None:
    cs, probes, records = failing(cluster, "db0")
    records["db0"] = replace(records["db0"], run_seen_at=NOW - 10)  # started 10 s ago, then healthy
    p = plan(cluster, observation(cluster, cs, probes=probes), records)
    assert p.records["db0"].failures == 1
    refused = "waiting for disruption budget: db9 (slot held by 10.0.0.9)"
    p2 = plan(
        cluster,
        observation(cluster, cs, probes=probes, failed={"db0": ("slot", refused)}),
        p.records,
        now=NOW + 1,
    )
    assert p2.records["db0"].failures == 1 and p2.records["db0"].reason == refused
    # Still judged as the failing run it is, not as a fresh start: a "starting" node would count
    # against another machine's budget, and two machines would each wait for the other for ever.
    assert p2.views["db0"].state is NodeState.UNHEALTHY
    assert actions(p2) == [("stop", "db0")]
    # Once stopped, the healthy time of the run that ended no longer resets the failure count.
    stopped = container(cluster, "db0", "exited", exit_code=143)
    p3 = plan(cluster, observation(cluster, [cs[0], stopped, cs[2]], probes=probes), p2.records, now=NOW + 2)
    assert p3.records["db0"].healthy_since is None and p3.records["db0"].failures == 1


# --- blocked, unhealthy, lease --------------------------------------------------------------------


def test_meta_down_blocks_ceresdb_probe_and_lease_restarts(cluster: containers.DesiredCluster) -> None:
    cs, _probes = running(cluster)
    bad = {c.node: probe(c, ok=False) for c in cs}
    records = {
        n: NodeRecord(run_key=c.run_key, healthy_since=NOW - 50, probe_failures=10, last_probe_at=NOW - 1)
        for n, c in zip(("db0", "db1"), cs[1:], strict=True)
    }
    lost = LeaseView(NOW, WALL, assigned={"127.0.0.1:8831": (0, 1)})
    dead_meta = container(cluster, "meta0", "exited", exit_code=2)
    p = plan(
        cluster,
        observation(cluster, [dead_meta, cs[1], cs[2]], meta_ready=False, probes=bad, leases=lost),
        records,
    )
    assert actions(p) == [("start", "meta0")]
    assert p.views["db0"].state is NodeState.BLOCKED and p.views["db1"].state is NodeState.BLOCKED


def test_exited_ceresdb_waits_for_meta(cluster: containers.DesiredCluster) -> None:
    p = plan(
        cluster,
        observation(cluster, [container(cluster, "db0", "exited", exit_code=1)], meta_ready=False),
        {"db0": NodeRecord(run_key="old")},
    )
    assert ("start", "db0") not in actions(p)
    assert p.views["db0"].state is NodeState.BLOCKED


@pytest.mark.parametrize(("failures_before", "acts"), [(1, []), (2, [("stop", "db0")])])
def test_unhealthy_after_failure_threshold_probes(
    cluster: containers.DesiredCluster, failures_before: int, acts: list[tuple[str, str]]
) -> None:
    cs, probes = running(cluster)
    probes["db0"] = probe(cs[1], ok=False)
    records = healthy_records(cs)
    records["db0"] = replace(records["db0"], probe_failures=failures_before)
    p = plan(cluster, observation(cluster, cs, probes=probes), records)
    assert actions(p) == acts
    if acts:
        assert p.actions[0].by_choice
        assert p.records["db0"].expected_exit == "id-db0"
        assert p.views["db0"].state is NodeState.UNHEALTHY
        assert p.notes[0].reason == "unhealthy: 3 failed probes: GET /: timed out"


def test_start_timeout_restarts_a_node_that_never_became_healthy(cluster: containers.DesiredCluster) -> None:
    cs, probes = running(cluster)
    probes["db0"] = probe(cs[1], ok=False)
    records = healthy_records(cs)
    records["db0"] = NodeRecord(
        run_key=cs[1].run_key, run_seen_at=NOW - 121, last_probe_at=NOW - 1, probe_failures=2
    )  # it failed every probe since it started
    p = plan(cluster, observation(cluster, cs, probes=probes), records)
    assert actions(p) == [("stop", "db0")]
    assert p.notes[0].type == "start_timeout"


def test_a_container_found_running_is_timed_from_its_start_and_judged_by_its_probes(
    cluster: containers.DesiredCluster,
) -> None:
    """A supervisor restarted beside a frozen node: the node started long ago (Docker's StartedAt),
    so it gets no fresh start_timeout, and it is stopped after failure_threshold failed probes,
    not after one."""
    cs, probes = running(cluster)  # started in January, the observation is of November
    db0 = cs[1]
    records: dict[str, NodeRecord] = {}
    for i, expected in enumerate([[], [], [("stop", "db0")]]):
        probes["db0"] = probe(db0, ok=False, at=NOW + i)
        p = plan(cluster, observation(cluster, cs, probes=probes), records, now=NOW + i)
        assert actions(p) == expected, i
        records = p.records
    assert p.records["db0"].run_seen_at < NOW - 120
    assert p.notes[0].type == "start_timeout" and "not healthy within 120s" in p.notes[0].reason
    recent = replace(db0, started_at=WALL - timedelta(seconds=10))
    p = plan(
        cluster,
        observation(cluster, [cs[0], recent, cs[2]], probes={**probes, "db0": probe(recent, False)}),
        {},
    )
    assert p.records["db0"].run_seen_at == NOW - 10  # 110 s of its start window left
    assert p.views["db0"].state is NodeState.STARTING and p.next_wake_at == NOW + 110


def test_busy_node_is_left_alone_and_its_stop_is_not_a_failure(cluster: containers.DesiredCluster) -> None:
    meta = container(cluster, "meta0")
    p = plan(cluster, observation(cluster, [meta], probes={"meta0": probe(meta)}, busy={"db0": "create"}))
    assert actions(p) == [("create", "db1")]
    assert p.views["db0"].state is NodeState.STARTING
    cs, probes = running(cluster)
    stopped = container(cluster, "db1", "exited", exit_code=143)
    p2 = plan(
        cluster,
        observation(cluster, [cs[0], cs[1], stopped], probes=probes, busy={"db1": "recreate"}),
        healthy_records(cs),
    )
    assert p2.notes == () and p2.records["db1"].failures == 0


LEASES = {"127.0.0.1:8831": (0, 3), "127.0.0.1:8832": (1, 4), "127.0.0.1:8833": (2, 5)}


def locks(*held: str) -> dict[int, ShardLock]:
    return {s: ShardLock(e, 7) for e, shards in LEASES.items() if e in held for s in shards}


def test_a_lost_lease_is_reopening_then_lost_then_restarted(tmp_path: Path) -> None:
    three = build(tmp_path, THREE)
    cs, probes = running(three)
    policy = replace(POLICY, lease_grace_s=5)
    records = healthy_records(cs)
    mine = ("127.0.0.1:8832", "127.0.0.1:8833")
    at = NOW
    p = plan(
        three,
        observation(three, cs, probes=probes, leases=LeaseView(at, WALL, LEASES, locks(*mine))),
        records,
        policy=policy,
    )
    assert p.views["db0"].state is NodeState.REOPENING and actions(p) == []
    assert "CeresMeta 1.2.2 should reopen them within" in (p.views["db0"].reason or "")
    # 1.2.2, two shards pending: up to 3 x (a 5 s tick + a 6.7 s heartbeat) = 35 s, then the grace
    for at, state, acts in [
        (NOW + 34.5, NodeState.REOPENING, []),
        (NOW + 35.5, NodeState.LEASE_LOST, []),
        (NOW + 40.5, NodeState.LEASE_LOST, [("stop", "db0")]),
    ]:
        view = LeaseView(at, WALL, LEASES, locks(*mine))
        p = plan(three, observation(three, cs, probes=probes, leases=view), p.records, now=at, policy=policy)
        assert (p.views["db0"].state, actions(p)) == (state, acts), at
    assert p.notes[0].type == "lease_lost" and p.notes[0].reason.startswith("lease lost for 5s: shards 0,3")


def test_lease_unknown_while_etcd_cannot_be_read_is_cluster_unknown(
    cluster: containers.DesiredCluster,
) -> None:
    cs, probes = running(cluster)
    broken = LeaseView(NOW, WALL, error="cannot read shard locks: meta0: timed out")
    p = plan(cluster, observation(cluster, cs, probes=probes, leases=broken), healthy_records(cs))
    assert p.views["db0"].state is NodeState.HEALTHY and "lease unknown" in (p.views["db0"].reason or "")
    assert p.cluster_state is planning.ClusterState.UNKNOWN
    assert "db0" not in p.releasable


def test_a_cluster_whose_shard_locks_are_not_read_yet_is_not_healthy(
    cluster: containers.DesiredCluster,
) -> None:
    """Meta ready, every node answers its probes, but nobody has read the shard locks yet: the
    CeresDB nodes are healthy without their shards known, so the cluster is still starting."""
    cs, probes = running(cluster)
    unread = replace(observation(cluster, cs, probes=probes), leases=None)
    p = plan(cluster, unread, healthy_records(cs))
    assert p.views["db0"].state is NodeState.HEALTHY and not p.views["db0"].available
    assert p.cluster_state is planning.ClusterState.STARTING


# --- the disruption budget ------------------------------------------------------------------------


def test_all_three_meta_members_failing_together_are_never_stopped_together(
    big: containers.DesiredCluster,
) -> None:
    cs, probes, records = failing(big, "meta0", "meta1", "meta2")
    p = plan(big, observation(big, cs, probes=probes), records)
    assert [a for a in actions(p) if a[1].startswith("meta")] == []
    for name in ("meta0", "meta1", "meta2"):
        assert p.views[name].state is NodeState.UNHEALTHY
        assert "waiting for disruption budget:" in (p.views[name].reason or "")
    assert p.records["meta0"].failures == 0  # nothing counted while it waits
    assert [n.type for n in p.notes] == ["budget_wait"] * 3
    again = plan(big, observation(big, cs, probes=probes), p.records)
    assert [n.type for n in again.notes] == []  # the wait is an event once, not every cycle


def test_one_meta_member_failing_is_restarted(big: containers.DesiredCluster) -> None:
    cs, probes, records = failing(big, "meta1")
    p = plan(big, observation(big, cs, probes=probes), records)
    assert actions(p) == [("stop", "meta1")]


def test_two_meta_members_failing_one_is_never_stopped_while_the_other_is_down(
    big: containers.DesiredCluster,
) -> None:
    cs, probes, records = failing(big, "meta1", "meta2")
    p = plan(big, observation(big, cs, probes=probes), records)
    assert actions(p) == []
    assert p.views["meta1"].reason.endswith("waiting for disruption budget: meta2 (unhealthy)")  # type: ignore[union-attr]


def test_a_budget_wait_is_one_event_naming_who_waits_for_whom_until_the_node_recovers(
    big: containers.DesiredCluster,
) -> None:
    """Each node held back by the budget is an event once: its name, what it waits for, and which
    action waits. A node that recovers forgets the wait, so the next one is an event again."""
    cs, probes, records = failing(big, "meta1", "meta2")
    p = plan(big, observation(big, cs, probes=probes), records)
    assert p.notes == (
        planning.Note(
            "meta1", "budget_wait", "waiting for disruption budget: meta2 (unhealthy)", "stop held back"
        ),
        planning.Note(
            "meta2", "budget_wait", "waiting for disruption budget: meta1 (unhealthy)", "stop held back"
        ),
    )
    well = {c.node: probe(c, at=NOW + 1) for c in cs}
    recovered = plan(big, observation(big, cs, probes=well), p.records, now=NOW + 1)
    assert actions(recovered) == [] and recovered.records["meta1"].budget_wait is None
    records = {**recovered.records}
    for name in ("meta1", "meta2"):
        records[name] = replace(records[name], probe_failures=2)
    sick = {c.node: probe(c, ok=c.node not in ("meta1", "meta2"), at=NOW + 2) for c in cs}
    again = plan(big, observation(big, cs, probes=sick), records, now=NOW + 2)
    assert [(n.node, n.type) for n in again.notes] == [("meta1", "budget_wait"), ("meta2", "budget_wait")]


def test_a_stop_whose_restart_is_due_at_once_wakes_nobody(cluster: containers.DesiredCluster) -> None:
    """The first failure restarts without delay: the restart follows the stop's exit, so there is
    no time to wake at (a wake at `now` would only run the same pass again)."""
    cs, probes, records = failing(cluster, "db0")
    p = plan(cluster, observation(cluster, cs, probes=probes), records)
    assert actions(p) == [("stop", "db0")] and p.records["db0"].next_restart_at == NOW
    assert p.next_wake_at is None


@pytest.mark.parametrize(
    ("bad", "max_unavailable", "stopped"),
    [
        # Failing their probes, they still hold their shards: not down, so one goes first; the
        # others wait for it (down from its stop until it is healthy with its shards again).
        (("db0",), 1, ["db0"]),
        (("db0", "db1"), 1, ["db0"]),
        (("db0", "db1", "db2"), 1, ["db0"]),
        (("db0", "db1"), 2, ["db0", "db1"]),
        (("db0", "db1", "db2"), 2, ["db0", "db1"]),
        (("db0", "db1", "db2"), 3, ["db0", "db1", "db2"]),
    ],
)
def test_ceresdb_stops_by_choice_within_max_unavailable(
    big: containers.DesiredCluster, bad: tuple[str, ...], max_unavailable: int, stopped: list[str]
) -> None:
    cs, probes, records = failing(big, *bad)
    p = plan(
        big, observation(big, cs, probes=probes), records, budget=Budget(max_unavailable=max_unavailable)
    )
    assert [n for kind, n in actions(p) if kind == "stop"] == stopped


def test_nodes_down_themselves_that_never_became_healthy_are_stopped_one_at_a_time(
    big: containers.DesiredCluster,
) -> None:
    """Found running by a restarted supervisor, failing, never seen healthy: each counts against
    the other's budget; the first by name goes, the others wait for it (no deadlock)."""
    cs, probes, records = failing(big, "db0", "db1", "db2")
    for name in ("db0", "db1", "db2"):
        records[name] = replace(records[name], healthy_since=None, run_seen_at=NOW - 300)
    p = plan(big, observation(big, cs, probes=probes), records)
    assert actions(p) == [("stop", "db0")], {n: (v.state, v.reason) for n, v in p.views.items()}
    assert p.views["db1"].reason.endswith("waiting for disruption budget: db0 (stopping)")  # type: ignore[union-attr]


def test_failing_nodes_that_meta_assigns_no_shards_are_down_themselves(
    big: containers.DesiredCluster,
) -> None:
    """Meta moved every shard to db0; db1 and db2 fail their probes; another machine's db9 fails
    too. They serve nothing, so they are down themselves, as the other agents judge their published
    records: db1 goes first, db2 and db9 wait for it. (Judged as holding shards, db2 and db9 and
    db1 each waited for the others for ever, across agents.)"""
    cs, probes, records = failing(big, "db1", "db2")
    everything_on_db0 = {"127.0.0.1:8831": (0, 1, 2, 3, 4, 5)}
    view = LeaseView(NOW, WALL, everything_on_db0, {s: ShardLock("127.0.0.1:8831", 7) for s in range(6)})
    budget = Budget(peers={"db9": ("ceresdb", "unhealthy")})
    p = plan(big, observation(big, cs, probes=probes, leases=view), records, budget=budget)
    assert actions(p) == [("stop", "db1")], {n: (v.state, v.reason) for n, v in p.views.items()}
    assert (p.views["db2"].reason or "").endswith("waiting for disruption budget: db1 (stopping)")


def test_a_crash_is_restarted_whatever_the_budget(big: containers.DesiredCluster) -> None:
    cs, probes, records = failing(big, "db1", "db2")
    crashed = container(big, "db0", "exited", exit_code=137)
    observed = [c for c in cs if c.node != "db0"] + [crashed]
    p = plan(big, observation(big, observed, probes=probes), records)
    assert ("start", "db0") in actions(p)
    assert ("stop", "db1") not in actions(p) and ("stop", "db2") not in actions(p)


def test_a_stop_by_choice_of_a_ceresdb_node_not_up_yet_says_it_is_still_starting(
    cluster: containers.DesiredCluster,
) -> None:
    """The executor waits for such a node to come up (or SIGKILLs it): the real server takes
    SIGTERM only once started. A node that came up is stopped the usual way; meta always is."""
    cs, probes = running(cluster)
    records = healthy_records(cs)
    records["db1"] = NodeRecord(run_key=cs[2].run_key, run_seen_at=NOW - 1)  # started a second ago
    restart = Controls(restarts={"db0": "planned restart (op-1)", "db1": "planned restart (op-2)"})
    probes.pop("db1")
    p = plan(cluster, observation(cluster, cs, probes=probes), records, controls=restart, budget=Budget(2))
    assert {a.node: a.while_starting for a in p.actions} == {"db0": False, "db1": True}
    meta = {"meta0": NodeRecord(run_key=cs[0].run_key, run_seen_at=NOW - 1)}
    p = plan(
        cluster,
        observation(cluster, cs, probes={}),
        meta,
        controls=Controls(restarts={"meta0": "planned restart (op-3)"}),
    )
    assert [(a.kind, a.node, a.while_starting) for a in p.actions] == [("restart", "meta0", False)]


def test_a_node_without_its_shards_holds_back_a_planned_restart(big: containers.DesiredCluster) -> None:
    cs, probes = running(big)
    records = healthy_records(cs)
    view = LeaseView(NOW, WALL, LEASES, locks("127.0.0.1:8831", "127.0.0.1:8833"))  # db1's shards are missing
    restart = Controls(restarts={"db0": "planned restart (op-1)"})
    p = plan(big, observation(big, cs, probes=probes, leases=view), records, controls=restart)
    assert p.views["db1"].state is NodeState.REOPENING
    assert actions(p) == []
    assert "waiting for disruption budget: db1 (reopening)" in (p.views["db0"].reason or "")


def test_a_node_down_itself_is_stopped_while_another_only_waits_for_its_shards(
    big: containers.DesiredCluster,
) -> None:
    """db2 fails its probes (down itself, its locks notwithstanding); db1 waits for meta to reopen
    its shards, maybe for db2 itself (up to 1.2.7 an offline node stops every reopen): db2 goes."""
    cs, probes, records = failing(big, "db2")
    view = LeaseView(NOW, WALL, LEASES, locks("127.0.0.1:8831", "127.0.0.1:8833"))  # db1's shards are missing
    p = plan(big, observation(big, cs, probes=probes, leases=view), records)
    assert actions(p) == [("stop", "db2")]


def test_an_unhealthy_node_holding_its_locks_counts_as_down(big: containers.DesiredCluster) -> None:
    """A wedged db2 still holds its shard locks; a recreate of healthy db0 (a reload) would make two
    nodes out with max_unavailable = 1: it waits."""
    cs, probes, records = failing(big, "db2")
    view = LeaseView(NOW, WALL, LEASES, locks("127.0.0.1:8831", "127.0.0.1:8832", "127.0.0.1:8833"))
    restart = Controls(restarts={"db0": "planned restart (op-1)"})
    p = plan(big, observation(big, cs, probes=probes, leases=view), records, controls=restart)
    assert ("restart", "db0") not in actions(p), actions(p)
    assert "waiting for disruption budget: db2 (unhealthy)" in (p.views["db0"].reason or "")


def test_a_node_whose_lease_cannot_be_read_counts_as_down(big: containers.DesiredCluster) -> None:
    """getNodeShards answered 500: the lease state of every node is unknown, never "unassigned":
    a planned restart of db0 waits, nobody counts as available."""
    cs, probes = running(big)
    records = healthy_records(cs)
    view = LeaseView(NOW, WALL, locks=locks("127.0.0.1:8831"), error="getNodeShards on meta0: HTTP 500: x")
    restart = Controls(restarts={"db0": "planned restart (op-1)"})
    p = plan(big, observation(big, cs, probes=probes, leases=view), records, controls=restart)
    assert actions(p) == []
    for name in ("db0", "db1", "db2"):
        assert not p.views[name].available
        assert p.views[name].lease is not None and p.views[name].lease.held is None  # type: ignore[union-attr]
    assert "waiting for disruption budget" in (p.views["db0"].reason or "")


def test_peers_and_unavailable_coordination_hold_back_stops(big: containers.DesiredCluster) -> None:
    cs, probes, records = failing(big, "db0")
    p = plan(
        big, observation(big, cs, probes=probes), records, budget=Budget(coordinated=True, available=False)
    )
    assert actions(p) == [] and "coordination unavailable" in (p.views["db0"].reason or "")
    crashed = container(big, "db1", "exited", exit_code=137)
    p2 = plan(
        big,
        observation(big, [c for c in cs if c.node != "db1"] + [crashed], probes=probes),
        records,
        budget=Budget(coordinated=True, available=False),
    )
    assert ("start", "db1") in actions(p2)  # failsafe: crashes are still restarted


# --- spec changes ---------------------------------------------------------------------------------


def test_changed_running_nodes_are_recreated_one_at_a_time_meta_first(
    cluster: containers.DesiredCluster,
) -> None:
    cs, _probes = running(cluster)
    changed = [replace(c, spec_hash="old") for c in cs]
    p = plan(
        cluster,
        observation(cluster, changed, probes={c.node: probe(c) for c in changed}),
        healthy_records(changed),
    )
    assert actions(p) == [("recreate", "meta0")] and p.actions[0].by_choice
    assert "waiting its turn" in (p.views["db0"].reason or "")


def test_changed_ceresdb_waits_while_another_recreate_is_in_flight(
    cluster: containers.DesiredCluster,
) -> None:
    cs, _probes = running(cluster)
    changed = [cs[0], replace(cs[1], spec_hash="old"), replace(cs[2], spec_hash="old")]
    p = plan(
        cluster,
        observation(cluster, changed, probes={c.node: probe(c) for c in changed}),
        healthy_records(changed),
    )
    assert actions(p) == [("recreate", "db0")]
    p2 = plan(
        cluster,
        observation(cluster, [cs[0], changed[2]], probes={"meta0": probe(cs[0])}, busy={"db0": "recreate"}),
        p.records,
    )
    assert actions(p2) == []


def test_changed_ceresdb_waits_for_every_other_node_healthy(cluster: containers.DesiredCluster) -> None:
    cs, probes = running(cluster)
    changed = [cs[0], replace(cs[1], spec_hash="old"), cs[2]]
    records = healthy_records(cs)
    records["db1"] = NodeRecord(run_key=cs[2].run_key, run_seen_at=NOW - 1)  # db1 still starting
    p = plan(cluster, observation(cluster, changed, probes={"meta0": probes["meta0"]}), records)
    assert actions(p) == [] and "waiting its turn: db1 not healthy" in (p.views["db0"].reason or "")


def test_changed_ceresdb_waits_for_a_meta_member_another_agent_has_still_to_recreate(tmp_path: Path) -> None:
    """The rolling change is cluster-wide: meta1 lives on another machine, whose agent publishes
    that it still runs the old spec; db0 here waits for it, then goes."""
    path = tmp_path / "c.toml"
    path.write_text(META3.replace('name = "meta1"\nhost = "127.0.0.1"', 'name = "meta1"\nhost = "127.0.0.2"'))
    cl = containers.build(loading.load(path).spec, lambda _ref: "", is_local=lambda host: host == "127.0.0.1")
    local = [container(cl, n.name) for n in cl.nodes if n.is_local]
    changed = [replace(c, spec_hash="old") if c.node == "db0" else c for c in local]
    observed = observation(cl, changed, probes={c.node: probe(c) for c in changed})
    peers = {"meta1": ("meta", None)}
    waiting = plan(
        cl,
        observed,
        healthy_records(changed),
        budget=Budget(coordinated=True, peers=peers, outdated=frozenset({"meta1"})),
    )
    assert actions(waiting) == []
    assert "meta first (meta1 not recreated yet)" in (waiting.views["db0"].reason or "")
    going = plan(cl, observed, healthy_records(changed), budget=Budget(coordinated=True, peers=peers))
    assert actions(going) == [("recreate", "db0")]


def test_changed_stopped_node_is_recreated_at_once(cluster: containers.DesiredCluster) -> None:
    cs, probes = running(cluster)
    stopped = replace(container(cluster, "db1", "exited", exit_code=0), spec_hash="old")
    p = plan(cluster, observation(cluster, [cs[0], cs[1], stopped], probes=probes))
    assert actions(p) == [("recreate", "db1")] and not p.actions[0].by_choice


# --- the engine, pauses ---------------------------------------------------------------------------


def test_containers_that_died_with_the_docker_engine_are_started_without_a_failure(
    cluster: containers.DesiredCluster,
) -> None:
    cs, _probes = running(cluster)
    records = healthy_records(cs)
    dead = [container(cluster, c.node, "exited", exit_code=143) for c in cs]
    p = plan(
        cluster,
        observation(cluster, dead, meta_ready=False, restarted=frozenset(c.id for c in dead)),
        records,
    )
    assert actions(p) == [("start", "meta0")]
    assert {n.type for n in p.notes} == {"engine_restarted"}
    assert all(r.failures == 0 for r in p.records.values())
    assert p.views["db0"].state is NodeState.BLOCKED and "docker engine restarted" in (
        p.views["db0"].reason or ""
    )


def test_a_paused_node_is_never_touched(cluster: containers.DesiredCluster) -> None:
    cs, probes, records = failing(cluster, "db0")
    p = plan(cluster, observation(cluster, cs, probes=probes), records, controls=Controls(frozenset({"db0"})))
    assert actions(p) == [] and p.views["db0"].state is NodeState.PAUSED
    assert p.views["db0"].reason == "paused by the operator; container running"
    stopped = container(cluster, "db0", "exited", exit_code=0)
    p2 = plan(
        cluster,
        observation(cluster, [cs[0], stopped, cs[2]], probes=probes),
        p.records,
        controls=Controls(all_paused=True),
    )
    assert actions(p2) == [] and p2.notes == ()
    assert p2.views["meta0"].state is NodeState.PAUSED
    assert p2.views["db0"].reason == "the whole cluster is paused; container stopped (exit 0)"
    resumed = plan(cluster, observation(cluster, [cs[0], stopped, cs[2]], probes=probes), p2.records)
    assert actions(resumed) == [("start", "db0")] and resumed.records["db0"].failures == 0


# --- nodes taken out of the file -----------------------------------------------------------------


def orphan(node: str = "db9", state: str = "running", role: str = "ceresdb") -> ObservedContainer:
    return ObservedContainer(
        id=f"id-{node}",
        name=f"ceres-x-{node}",
        node=node,
        role=role,
        spec_hash="old",
        state=state,
        image="img",
    )


def with_orphans(obs: Observation, *orphans: ObservedContainer) -> Observation:
    return replace(obs, orphans=orphans)


def test_a_running_node_taken_out_of_the_file_is_removed_within_the_budget(
    big: containers.DesiredCluster,
) -> None:
    cs, probes = running(big)
    records = healthy_records(cs)
    p = plan(big, with_orphans(observation(big, cs, probes=probes), orphan()), records)
    assert [(a.kind, a.node, a.by_choice, a.role) for a in p.actions] == [("remove", "db9", True, "ceresdb")]


def test_a_removal_waits_for_the_budget_and_the_failsafe(big: containers.DesiredCluster) -> None:
    cs, probes, records = failing(big, "db1")
    records["db1"] = replace(records["db1"], probe_failures=0)
    probes["db1"] = probe(cs[4], ok=True)
    view = LeaseView(NOW, WALL, LEASES, locks("127.0.0.1:8831", "127.0.0.1:8833"))  # db1 reopening
    p = plan(big, with_orphans(observation(big, cs, probes=probes, leases=view), orphan()), records)
    assert not [a for a in p.actions if a.node == "db9"]
    assert "waiting for disruption budget: db1 (reopening)" in p.retiring["db9"]
    cs, probes = running(big)
    failsafe = Budget(coordinated=True, available=False)
    p = plan(
        big, with_orphans(observation(big, cs, probes=probes), orphan()), healthy_records(cs), budget=failsafe
    )
    assert not p.actions and "coordination unavailable" in p.retiring["db9"]


def test_a_paused_node_or_an_older_file_removes_nothing(big: containers.DesiredCluster) -> None:
    cs, probes = running(big)
    records = healthy_records(cs)
    obs = with_orphans(observation(big, cs, probes=probes), orphan(), orphan("db8", state="exited"))
    paused = plan(big, obs, records, controls=Controls(frozenset({"db9", "db8"})))
    assert not paused.actions and set(paused.retiring) == {"db9", "db8"}
    older = plan(
        big,
        obs,
        records,
        budget=Budget(files_differ="127.0.0.2 runs generation 4, this file is generation 3"),
    )
    assert not older.actions and "generation 4" in older.retiring["db8"]


def test_a_stopped_node_taken_out_of_the_file_is_removed_without_a_slot(
    big: containers.DesiredCluster,
) -> None:
    cs, probes = running(big)
    p = plan(
        big, with_orphans(observation(big, cs, probes=probes), orphan(state="exited")), healthy_records(cs)
    )
    assert [(a.kind, a.node, a.by_choice) for a in p.actions] == [("remove", "db9", False)]


def test_a_meta_member_taken_out_of_the_file_keeps_etcd_s_quorum(big: containers.DesiredCluster) -> None:
    cs, probes, records = failing(big, "meta1")
    p = plan(big, with_orphans(observation(big, cs, probes=probes), orphan("meta9", role="meta")), records)
    assert not [a for a in p.actions if a.node == "meta9"]
    assert "meta1" in p.retiring["meta9"]


def test_a_removal_is_not_held_back_by_its_own_slot(big: containers.DesiredCluster) -> None:
    """The store already lists db9's slot (taken for this very removal, e.g. before a failed try):
    it does not stand in db9's own way."""
    cs, probes = running(big)
    budget = Budget(coordinated=True, slots={"db9": "127.0.0.1"})
    p = plan(
        big, with_orphans(observation(big, cs, probes=probes), orphan()), healthy_records(cs), budget=budget
    )
    assert actions(p) == [("remove", "db9")] and p.retiring == {}


def test_a_removal_held_back_by_the_budget_does_not_hold_back_the_next_orphans(
    big: containers.DesiredCluster,
) -> None:
    """db9 still runs and waits for the budget (db1 reopens its shards); db8 and meta9 are judged
    on their own: the stopped db8 is removed without a slot, and meta9 by meta's own budget."""
    cs, probes = running(big)
    view = LeaseView(NOW, WALL, LEASES, locks("127.0.0.1:8831", "127.0.0.1:8833"))  # db1 reopening
    obs = observation(big, cs, probes=probes, leases=view)
    p = plan(
        big,
        with_orphans(obs, orphan(), orphan("db8", "exited"), orphan("meta9", role="meta")),
        healthy_records(cs),
    )
    assert [(a.kind, a.node) for a in p.actions] == [("remove", "db8"), ("remove", "meta9")]
    assert p.retiring == {"db9": "waiting for disruption budget: db1 (reopening)"}


# --- upgrades: a container of another release waits for the upgrade to ask for it ----------------

OLD = "ceresdb 1.2.4"
"""Another release than the file's (BASE is 1.2.2): what an upgrade (or the way back) starts from."""
ASK = planning.UpgradeAsk("upgrade op-1")
TOGETHER = planning.UpgradeAsk("upgrade op-1", together=True)


def outdated(
    cluster: containers.DesiredCluster, node: str, release: str = OLD, state: str = "running", **kw: object
) -> ObservedContainer:
    return replace(container(cluster, node, state, **kw), spec_hash="old", release=release)  # type: ignore[arg-type]


# (case, db0's release, its state, the upgrade's ask, expected (kind, by_choice, as_is, flush) or None)
UPGRADE_CASES = [
    ("another release, not asked: runs on as it is", OLD, "running", None, None),
    (
        "another release, not asked, exited: started as it is",
        OLD,
        "exited",
        None,
        ("start", False, True, False),
    ),
    ("asked: recreated within the budget, flushed", OLD, "running", ASK, ("recreate", True, False, True)),
    (
        "asked together: recreated at once, flushed",
        OLD,
        "running",
        TOGETHER,
        ("recreate", False, False, True),
    ),
    ("asked, exited: recreated at once", OLD, "exited", ASK, ("recreate", False, False, False)),
    (
        "the same release, spec changed: a plain rolling recreate",
        "ceresdb 1.2.2",
        "running",
        None,
        ("recreate", True, False, True),
    ),
    (
        "a release nobody can tell: a plain rolling recreate",
        "",
        "running",
        None,
        ("recreate", True, False, True),
    ),
]


@pytest.mark.parametrize(
    ("release", "state", "ask", "expected"), [c[1:] for c in UPGRADE_CASES], ids=[c[0] for c in UPGRADE_CASES]
)
def test_a_container_of_another_release_is_recreated_only_when_the_upgrade_asks(
    cluster: containers.DesiredCluster,
    release: str,
    state: str,
    ask: planning.UpgradeAsk | None,
    expected: tuple[str, bool, bool, bool] | None,
) -> None:
    cs, _probes = running(cluster)
    db0 = outdated(cluster, "db0", release, state, exit_code=None if state == "running" else 0)
    observed = [cs[0], db0, cs[2]]
    records = healthy_records(observed)
    if state != "running":
        records.pop("db0")  # found stopped: no failure counted, started at once
    controls = Controls(upgrades={"db0": ask} if ask else {}, upgrade_note="waits its turn (upgrade op-1)")
    p = plan(
        cluster,
        observation(cluster, observed, probes={c.node: probe(c) for c in observed}),
        records,
        controls=controls,
    )
    got = [(a.kind, a.by_choice, a.as_is, a.flush) for a in p.actions if a.node == "db0"]
    assert got == ([expected] if expected else [])
    if expected is None:
        assert p.views["db0"].state is NodeState.HEALTHY
        assert "runs ceresdb 1.2.4; waits its turn (upgrade op-1)" in (p.views["db0"].reason or "")


def test_an_asked_step_skips_the_turn_but_not_the_budget(big: containers.DesiredCluster) -> None:
    """Going back after a halt: db2 is down, meta goes first anyway (the operation orders), yet a
    CeresDB node is stopped by choice only within max_unavailable."""
    cs, probes = running(big)
    observed = [outdated(big, c.node) if c.node in ("meta1", "db0") else c for c in cs]
    records = healthy_records(observed)
    records["db2"] = NodeRecord(run_key=cs[5].run_key, run_seen_at=NOW - 1)  # db2 starting: down
    probes = {c.node: probe(c) for c in observed if c.node != "db2"}
    meta = plan(
        big, observation(big, observed, probes=probes), records, controls=Controls(upgrades={"meta1": ASK})
    )
    assert actions(meta) == [("recreate", "meta1")]
    plain = plan(big, observation(big, [replace(c, release="") for c in observed], probes=probes), records)
    assert actions(plain) == [] and "waiting its turn" in (plain.views["meta1"].reason or "")
    db = plan(
        big, observation(big, observed, probes=probes), records, controls=Controls(upgrades={"db0": ASK})
    )
    assert actions(db) == [] and "waiting for disruption budget: db2" in (db.views["db0"].reason or "")


def test_an_asked_recreate_waits_for_one_granted_earlier_in_the_same_pass(
    cluster: containers.DesiredCluster,
) -> None:
    """meta0's spec changed and the upgrade asks for db0 in the same pass: meta0 goes first, and db0,
    though asked (its order is the operation's, not the turn's), is not recreated beside it."""
    cs, _probes = running(cluster)
    observed = [replace(cs[0], spec_hash="old"), outdated(cluster, "db0"), cs[2]]
    p = plan(
        cluster,
        observation(cluster, observed, probes={c.node: probe(c) for c in observed}),
        healthy_records(observed),
        controls=Controls(upgrades={"db0": ASK}),
    )
    assert actions(p) == [("recreate", "meta0")]
    assert "waiting its turn: another node is being recreated" in (p.views["db0"].reason or "")


def test_recreates_wait_until_every_machine_has_the_images(cluster: containers.DesiredCluster) -> None:
    cs, _probes = running(cluster)
    observed = [cs[0], outdated(cluster, "db0"), replace(cs[2], spec_hash="old")]
    missing = "127.0.0.2 lacks ceresdb/ceresdb-server:v1.2.2"
    p = plan(
        cluster,
        observation(cluster, observed, probes={c.node: probe(c) for c in observed}),
        healthy_records(observed),
        budget=Budget(images_missing=missing),
        controls=Controls(upgrades={"db0": ASK}),
    )
    assert actions(p) == []
    for node in ("db0", "db1"):
        assert f"waiting until every machine has the images: {missing}" in (p.views[node].reason or "")


def test_a_planned_restart_of_a_node_of_another_release_keeps_its_config(
    cluster: containers.DesiredCluster,
) -> None:
    cs, _probes = running(cluster)
    observed = [cs[0], outdated(cluster, "db0"), cs[2]]
    p = plan(
        cluster,
        observation(cluster, observed, probes={c.node: probe(c) for c in observed}),
        healthy_records(observed),
        controls=Controls(restarts={"db0": "planned restart (op-2)"}),
    )
    assert [(a.kind, a.as_is, a.flush) for a in p.actions] == [("restart", True, True)]
