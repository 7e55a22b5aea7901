"""planning.plan() decided by table: desired x observed x memory x time. No Docker, no mocks."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ceres_supervisor import desired, loading, planning
from ceres_supervisor.observed import LeaseView, MetaMemberProbe, Observation, ObservedContainer, ProbeResult
from ceres_supervisor.planning import NodeRecord, NodeState, Policy

from .conftest import BASE

NOW = 1000.0
WALL = datetime(2026, 11, 26, tzinfo=UTC)
POLICY = Policy(failure_threshold=3, start_timeout_s=120, lease_grace_s=60, backoff_initial_s=1, backoff_max_s=60,
                backoff_reset_s=600, crashloop_failures=5, crashloop_window_s=600)


@pytest.fixture
def cluster(tmp_path: Path) -> desired.DesiredCluster:
    path = tmp_path / "c.toml"
    path.write_text(BASE)
    return desired.build(loading.load(path).spec, lambda _ref: "", is_local=lambda host: True)


def container(cluster: desired.DesiredCluster, node: str, state: str = "running", *, spec_hash: str | None = None,
              exit_code: int | None = None, started: int = 1, finished: int = 2) -> ObservedContainer:
    n = cluster.node(node)
    assert n is not None
    return ObservedContainer(
        id=f"id-{node}", name=f"ceres-x-{node}", node=node, role=n.role,
        spec_hash=n.spec_hash if spec_hash is None else spec_hash, state=state, image="img",
        exit_code=exit_code, started_at=datetime(2026, 1, 1, 0, 0, started, tzinfo=UTC),
        finished_at=None if state == "running" else datetime(2026, 1, 1, 0, 0, finished, tzinfo=UTC),
    )


def probe(c: ObservedContainer, ok: bool = True, at: float = NOW) -> ProbeResult:
    return ProbeResult(ok, "GET / 200" if ok else "GET /: timed out", at, WALL, 0.001, c.run_key)


def observation(cluster: desired.DesiredCluster, containers: list[ObservedContainer], *, meta_ready: bool = True,
                probes: dict[str, ProbeResult] | None = None, leases: LeaseView | None = None,
                busy: dict[str, str] | None = None, failed: dict[str, str] | None = None) -> Observation:
    alive = ProbeResult(meta_ready, "GET /api/v1/healthCheck 200", NOW, WALL)
    return Observation(
        at=NOW, wall=WALL, containers={c.node: c for c in containers}, orphans=(), engine_error=None,
        probes=probes or {}, meta={"meta0": MetaMemberProbe(alive, meta_ready, meta_ready)}, leases=leases,
        busy=busy or {}, failed_actions=failed or {},
    )


def plan(cluster: desired.DesiredCluster, obs: Observation, records: dict[str, NodeRecord] | None = None,
         now: float = NOW, jitter: float = 0.0, policy: Policy = POLICY) -> planning.Plan:
    return planning.plan(cluster, obs, records or {}, now, lambda: jitter, policy)


def actions(p: planning.Plan) -> list[tuple[str, str]]:
    return [(a.kind, a.node) for a in p.actions]


def healthy_cluster(cluster: desired.DesiredCluster) -> tuple[list[ObservedContainer], dict[str, ProbeResult]]:
    cs = [container(cluster, n) for n in ("meta0", "db0", "db1")]
    return cs, {c.node: probe(c) for c in cs}


# --- ordering and creation ------------------------------------------------------------------------

def test_cold_start_creates_meta_and_blocks_ceresdb(cluster: desired.DesiredCluster) -> None:
    p = plan(cluster, observation(cluster, [], meta_ready=False))
    assert actions(p) == [("create", "meta0")]
    assert p.views["db0"].state is NodeState.BLOCKED and p.views["db1"].state is NodeState.BLOCKED
    assert p.cluster_state is planning.ClusterState.STARTING


def test_ceresdb_created_once_meta_is_ready(cluster: desired.DesiredCluster) -> None:
    meta = container(cluster, "meta0")
    p = plan(cluster, observation(cluster, [meta], probes={"meta0": probe(meta)}))
    assert actions(p) == [("create", "db0"), ("create", "db1")]


def test_all_meta_members_start_together(tmp_path: Path) -> None:
    text = BASE.replace('[[ceresdb.nodes]]\nname = "db0"', '[[meta.nodes]]\nname = "meta1"\nhost = "10.0.0.2"\n'
                        '[[meta.nodes]]\nname = "meta2"\nhost = "10.0.0.3"\n\n[[ceresdb.nodes]]\nname = "db0"', 1)
    path = tmp_path / "c.toml"
    path.write_text(text)
    three = desired.build(loading.load(path).spec, lambda _ref: "", is_local=lambda host: True)
    p = planning.plan(three, Observation(NOW, WALL, {}, (), None, {}, {}, None, {}), {}, NOW, lambda: 0.0, POLICY)
    assert actions(p) == [("create", "meta0"), ("create", "meta1"), ("create", "meta2")]


def test_healthy_adopted_cluster_is_left_alone(cluster: desired.DesiredCluster) -> None:
    cs, probes = healthy_cluster(cluster)
    p = plan(cluster, observation(cluster, cs, probes=probes))
    assert actions(p) == []
    assert {v.state for v in p.views.values()} == {NodeState.HEALTHY}
    assert p.cluster_state is planning.ClusterState.HEALTHY


def test_remote_nodes_are_never_acted_on(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(BASE)
    remote_db = desired.build(loading.load(path).spec, lambda _ref: "", is_local=lambda host: False)
    p = planning.plan(remote_db, Observation(NOW, WALL, {}, (), None, {}, {}, None, {}), {}, NOW, lambda: 0.0, POLICY)
    assert actions(p) == []
    assert {v.state for v in p.views.values()} == {NodeState.REMOTE}


# --- failures and backoff -------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "jitter", "delay"), [
    (1, 0.0, 0.0), (1, 0.2, 0.0), (2, 0.0, 1.0), (3, 0.0, 2.0), (4, 0.0, 4.0), (5, 0.2, 9.6), (6, -0.2, 12.8),
    (8, 0.0, 60.0), (20, 0.2, 60.0),
])
def test_restart_delay(n: int, jitter: float, delay: float) -> None:
    assert planning.restart_delay(n, POLICY, jitter) == pytest.approx(delay)


def test_first_unexpected_exit_restarts_at_once(cluster: desired.DesiredCluster) -> None:
    cs, probes = healthy_cluster(cluster)
    first = plan(cluster, observation(cluster, cs, probes=probes))
    dead = container(cluster, "db0", "exited", exit_code=137)
    p = plan(cluster, observation(cluster, [cs[0], dead, cs[2]], probes=probes), first.records)
    assert actions(p) == [("start", "db0")]
    assert p.records["db0"].failures == 1 and p.records["db0"].restarts == 1
    assert p.records["db0"].last_exit is not None and p.records["db0"].last_exit.code == 137
    assert [(n.node, n.type, n.reason) for n in p.notes] == [("db0", "died", "exit 137 (SIGKILL)")]


def test_meta_exit_code_0_is_a_failure(cluster: desired.DesiredCluster) -> None:
    cs, probes = healthy_cluster(cluster)
    first = plan(cluster, observation(cluster, cs, probes=probes))
    dead = container(cluster, "meta0", "exited", exit_code=0)
    p = plan(cluster, observation(cluster, [dead, cs[1], cs[2]], meta_ready=False), first.records)
    assert ("start", "meta0") in actions(p)
    assert p.notes[0].reason == "exit 0 (CeresMeta exits 0 when etcd fails)"


def test_second_failure_waits_with_backoff_then_starts(cluster: desired.DesiredCluster) -> None:
    cs, probes = healthy_cluster(cluster)
    records = {"db0": NodeRecord(failures=1, failure_times=(NOW - 5,), restarts=1, run_key="old")}
    dead = container(cluster, "db0", "exited", exit_code=1)
    p = plan(cluster, observation(cluster, [cs[0], dead, cs[2]], probes=probes), records, jitter=0.1)
    assert actions(p) == []
    assert p.views["db0"].state is NodeState.BACKOFF
    assert p.views["db0"].next_restart_at == pytest.approx(NOW + 1.1)
    assert p.next_wake_at == pytest.approx(NOW + 1.1)
    later = plan(cluster, observation(cluster, [cs[0], dead, cs[2]], probes=probes), p.records, now=NOW + 1.2)
    assert actions(later) == [("start", "db0")]
    assert later.records["db0"].failures == 2  # the same exit is not counted twice


def test_crashloop_after_five_failures_in_the_window(cluster: desired.DesiredCluster) -> None:
    cs, probes = healthy_cluster(cluster)
    times = tuple(NOW - 60 * i for i in range(1, 5))
    records = {"db0": NodeRecord(failures=4, failure_times=times, run_key="old")}
    dead = container(cluster, "db0", "exited", exit_code=1)
    p = plan(cluster, observation(cluster, [cs[0], dead, cs[2]], probes=probes), records)
    assert p.records["db0"].crashloop
    assert p.views["db0"].state is NodeState.CRASHLOOP
    assert [n.type for n in p.notes] == ["died", "crashloop"]
    assert p.cluster_state is planning.ClusterState.DEGRADED


def test_old_failures_outside_the_window_do_not_count(cluster: desired.DesiredCluster) -> None:
    cs, probes = healthy_cluster(cluster)
    records = {"db0": NodeRecord(failures=4, failure_times=tuple(NOW - 700 - i for i in range(4)), run_key="old")}
    p = plan(cluster, observation(cluster, [cs[0], container(cluster, "db0", "exited", exit_code=1), cs[2]],
                                  probes=probes), records)
    assert not p.records["db0"].crashloop


def test_failure_count_resets_after_a_healthy_backoff_reset(cluster: desired.DesiredCluster) -> None:
    cs, probes = healthy_cluster(cluster)
    db0 = cs[1]
    records = {"db0": NodeRecord(failures=5, crashloop=True, run_key=db0.run_key, healthy_since=NOW - 601,
                                 last_probe_at=NOW - 1)}
    p = plan(cluster, observation(cluster, cs, probes=probes), records)
    assert p.records["db0"].failures == 0 and not p.records["db0"].crashloop


def test_exit_the_supervisor_caused_is_not_a_failure(cluster: desired.DesiredCluster) -> None:
    cs, probes = healthy_cluster(cluster)
    records = {"db0": NodeRecord(failures=1, expected_exit="id-db0", run_key="old", next_restart_at=NOW + 5)}
    p = plan(cluster, observation(cluster, [cs[0], container(cluster, "db0", "exited", exit_code=0), cs[2]],
                                  probes=probes), records)
    assert p.notes == () and p.records["db0"].failures == 1
    assert p.views["db0"].state is NodeState.BACKOFF


def test_exited_container_found_at_start_is_started_without_a_failure(cluster: desired.DesiredCluster) -> None:
    cs, probes = healthy_cluster(cluster)
    p = plan(cluster, observation(cluster, [cs[0], container(cluster, "db0", "exited", exit_code=0), cs[2]],
                                  probes=probes))
    assert actions(p) == [("start", "db0")]
    assert p.notes == () and p.records["db0"].restarts == 0


def test_failed_action_counts_as_a_failure(cluster: desired.DesiredCluster) -> None:
    meta = container(cluster, "meta0")
    p = plan(cluster, observation(cluster, [meta], probes={"meta0": probe(meta)}, failed={"db0": "image missing"}),
             {"db0": NodeRecord(failures=1, failure_times=(NOW,))})
    assert ("create", "db0") not in actions(p)
    assert p.views["db0"].state is NodeState.BACKOFF and p.views["db0"].reason == "image missing"


# --- blocked, unhealthy, lease --------------------------------------------------------------------

def test_meta_down_blocks_ceresdb_probe_and_lease_restarts(cluster: desired.DesiredCluster) -> None:
    cs, _probes = healthy_cluster(cluster)
    bad = {n: probe(c, ok=False) for n, c in zip(("meta0", "db0", "db1"), cs, strict=True)}
    records = {n: NodeRecord(run_key=c.run_key, healthy_since=NOW - 50, probe_failures=10, last_probe_at=NOW - 1)
               for n, c in zip(("db0", "db1"), cs[1:], strict=True)}
    lost = LeaseView(NOW, WALL, assigned={"127.0.0.1:8831": (0, 1)}, locked={})
    dead_meta = container(cluster, "meta0", "exited", exit_code=2)
    p = plan(cluster, observation(cluster, [dead_meta, cs[1], cs[2]], meta_ready=False, probes=bad, leases=lost),
             records)
    assert actions(p) == [("start", "meta0")]
    assert p.views["db0"].state is NodeState.BLOCKED and p.views["db1"].state is NodeState.BLOCKED


def test_exited_ceresdb_waits_for_meta(cluster: desired.DesiredCluster) -> None:
    p = plan(cluster, observation(cluster, [container(cluster, "db0", "exited", exit_code=1)], meta_ready=False),
             {"db0": NodeRecord(run_key="old")})
    assert ("start", "db0") not in actions(p)
    assert p.views["db0"].state is NodeState.BLOCKED


@pytest.mark.parametrize(("failures_before", "acts"), [(1, []), (2, [("stop", "db0")])])
def test_unhealthy_after_failure_threshold_probes(cluster: desired.DesiredCluster, failures_before: int,
                                                  acts: list[tuple[str, str]]) -> None:
    cs, probes = healthy_cluster(cluster)
    probes["db0"] = probe(cs[1], ok=False)
    records = {"db0": NodeRecord(run_key=cs[1].run_key, healthy_since=NOW - 30, probe_failures=failures_before,
                                 last_probe_at=NOW - 1)}
    p = plan(cluster, observation(cluster, cs, probes=probes), records)
    assert actions(p) == acts
    if acts:
        assert p.records["db0"].expected_exit == "id-db0"
        assert p.views["db0"].state is NodeState.UNHEALTHY
        assert p.notes[0].reason == "unhealthy: 3 failed probes: GET /: timed out"


@pytest.mark.parametrize(("lost_for", "acts", "state"), [
    (None, [], NodeState.LEASE_LOST), (59, [], NodeState.LEASE_LOST), (60, [("stop", "db0")], NodeState.LEASE_LOST),
])
def test_lease_lost_restarts_after_the_grace(cluster: desired.DesiredCluster, lost_for: float | None,
                                             acts: list[tuple[str, str]], state: NodeState) -> None:
    cs, probes = healthy_cluster(cluster)
    leases = LeaseView(NOW, WALL, assigned={"127.0.0.1:8831": (0, 2), "127.0.0.1:8832": (1, 3)},
                       locked={1: "127.0.0.1:8832", 3: "127.0.0.1:8832", 0: "127.0.0.1:8831"})
    records = {"db0": NodeRecord(run_key=cs[1].run_key, healthy_since=NOW - 300, last_probe_at=NOW - 1,
                                 lease_lost_since=None if lost_for is None else NOW - lost_for)}
    p = plan(cluster, observation(cluster, cs, probes=probes, leases=leases), records)
    assert actions(p) == acts
    assert p.views["db0"].state is state
    assert p.views["db1"].state is NodeState.HEALTHY
    assert "shards 2 not locked by 127.0.0.1:8831" in (p.views["db0"].reason or "")


def test_lease_unknown_before_shards_are_assigned_is_not_lost(cluster: desired.DesiredCluster) -> None:
    cs, probes = healthy_cluster(cluster)
    p = plan(cluster, observation(cluster, cs, probes=probes, leases=LeaseView(NOW, WALL)))
    assert p.views["db0"].state is NodeState.HEALTHY


def test_start_timeout_restarts_a_node_that_never_became_healthy(cluster: desired.DesiredCluster) -> None:
    cs, probes = healthy_cluster(cluster)
    probes["db0"] = probe(cs[1], ok=False)
    records = {"db0": NodeRecord(run_key=cs[1].run_key, run_seen_at=NOW - 121, last_probe_at=NOW - 1)}
    p = plan(cluster, observation(cluster, cs, probes=probes), records)
    assert actions(p) == [("stop", "db0")]
    assert p.notes[0].type == "start_timeout"


def test_busy_node_is_left_alone(cluster: desired.DesiredCluster) -> None:
    meta = container(cluster, "meta0")
    p = plan(cluster, observation(cluster, [meta], probes={"meta0": probe(meta)}, busy={"db0": "create"}))
    assert actions(p) == [("create", "db1")]
    assert p.views["db0"].state is NodeState.STARTING


# --- spec changes ---------------------------------------------------------------------------------

def test_changed_running_nodes_are_recreated_one_at_a_time_meta_first(cluster: desired.DesiredCluster) -> None:
    cs, _probes = healthy_cluster(cluster)
    changed = [replace(c, spec_hash="old") for c in cs]
    p = plan(cluster, observation(cluster, changed, probes={c.node: probe(c) for c in changed}))
    assert actions(p) == [("recreate", "meta0")]
    assert "waiting its turn" in (p.views["db0"].reason or "")


def test_changed_ceresdb_waits_while_another_recreate_is_in_flight(cluster: desired.DesiredCluster) -> None:
    cs, _probes = healthy_cluster(cluster)
    changed = [cs[0], replace(cs[1], spec_hash="old"), replace(cs[2], spec_hash="old")]
    p = plan(cluster, observation(cluster, changed, probes={c.node: probe(c) for c in changed}))
    assert actions(p) == [("recreate", "db0")]
    p2 = plan(cluster, observation(cluster, [cs[0], changed[2]], probes={"meta0": probe(cs[0])},
                                   busy={"db0": "recreate"}))
    assert actions(p2) == []


def test_changed_stopped_node_is_recreated_at_once(cluster: desired.DesiredCluster) -> None:
    cs, probes = healthy_cluster(cluster)
    stopped = replace(container(cluster, "db1", "exited", exit_code=0), spec_hash="old")
    p = plan(cluster, observation(cluster, [cs[0], cs[1], stopped], probes=probes))
    assert actions(p) == [("recreate", "db1")]


def test_lease_grace_is_measured_between_readings_not_by_the_clock(cluster: desired.DesiredCluster) -> None:
    """A single reading that showed the lease lost never restarts a node, however long ago it was
    taken: only a reading lease_grace later that still shows it lost does."""
    cs, probes = healthy_cluster(cluster)
    policy = replace(POLICY, lease_grace_s=5)
    lost = {"127.0.0.1:8831": (0, 2), "127.0.0.1:8832": (1, 3)}
    first = LeaseView(NOW - 10, WALL, assigned=lost, locked={1: "127.0.0.1:8832", 3: "127.0.0.1:8832"})
    records = {"db0": NodeRecord(run_key=cs[1].run_key, healthy_since=NOW - 300, last_probe_at=NOW - 1)}
    p = plan(cluster, observation(cluster, cs, probes=probes, leases=first), records, now=NOW + 100, policy=policy)
    assert actions(p) == [] and p.views["db0"].state is NodeState.LEASE_LOST
    later = replace(first, at=NOW - 10 + 5)
    p2 = plan(cluster, observation(cluster, cs, probes=probes, leases=later), p.records, now=NOW + 101, policy=policy)
    assert actions(p2) == [("stop", "db0")]
    assert p2.notes[0].reason.startswith("lease lost for 5s")
    back = replace(first, at=NOW - 10 + 3, locked={**first.locked, 0: "127.0.0.1:8831", 2: "127.0.0.1:8831"})
    p3 = plan(cluster, observation(cluster, cs, probes=probes, leases=back), p.records, now=NOW + 101, policy=policy)
    assert actions(p3) == [] and p3.records["db0"].lease_lost_since is None


def test_a_lease_reading_older_than_the_run_says_nothing_about_it(cluster: desired.DesiredCluster) -> None:
    cs, probes = healthy_cluster(cluster)
    stale = LeaseView(NOW - 30, WALL, assigned={"127.0.0.1:8831": (0, 2)}, locked={})
    records = {"db0": NodeRecord(run_key=cs[1].run_key, run_seen_at=NOW - 20, healthy_since=NOW - 19,
                                 last_probe_at=NOW - 1, lease_lost_since=NOW - 100)}
    p = plan(cluster, observation(cluster, cs, probes=probes, leases=stale), records)
    assert actions(p) == [] and p.views["db0"].state is NodeState.HEALTHY
