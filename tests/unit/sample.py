"""A sample cluster for the tests of what people see (metrics, journal, routes, dashboard): the
desired state of `conftest.BASE` (1 meta + 2 CeresDB nodes), observed healthy and planned by the
real planner, and plans with hand-set node states."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from ceres_supervisor.decisions import planning
from ceres_supervisor.decisions.planning import ClusterState, NodeRecord, NodeState, NodeView, Plan, Policy
from ceres_supervisor.desired import containers as desired
from ceres_supervisor.desired import loading
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
WALL = datetime(2026, 11, 28, tzinfo=UTC)
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


def desired_cluster(
    tmp_path: Path, text: str = BASE, is_local: Callable[[str], bool] = lambda _host: True
) -> desired.DesiredCluster:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return desired.build(loading.load(path).spec, lambda _ref: "", is_local)


def healthy_observation(cluster: desired.DesiredCluster) -> Observation:
    """Every local node running for a while, probes ok, every shard lock held."""
    containers = {
        n.name: ObservedContainer(
            id=f"id-{n.name}",
            name=f"ceres-x-{n.name}",
            node=n.name,
            role=n.role,
            spec_hash=n.spec_hash,
            state="running",
            image="img",
            started_at=datetime(2026, 11, 27, tzinfo=UTC),
        )
        for n in cluster.nodes
        if n.is_local
    }
    probes = {
        name: ProbeResult(True, "GET / 200", NOW, WALL, 0.001, c.run_key) for name, c in containers.items()
    }
    assigned: dict[str, tuple[int, ...]] = {n.endpoint: (i, i + 2) for i, n in enumerate(cluster.ceresdb)}
    locks = {shard: ShardLock(endpoint, 7) for endpoint, shards in assigned.items() for shard in shards}
    alive = ProbeResult(True, "GET /api/v1/healthCheck 200", NOW, WALL)
    return Observation(
        at=NOW,
        wall=WALL,
        containers=containers,
        orphans=(),
        engine_error=None,
        probes=probes,
        meta={m.name: MetaMemberProbe(alive, True) for m in cluster.meta},
        leader=MetaLeader(NOW, cluster.meta[0].name, True, ""),
        leases=LeaseView(NOW, WALL, assigned, locks),
        busy={},
    )


def healthy_plan(tmp_path: Path) -> tuple[desired.DesiredCluster, Plan]:
    """1 meta + 2 CeresDB nodes, running for a while, probes ok, every shard lock held."""
    cluster = desired_cluster(tmp_path)
    observation = healthy_observation(cluster)
    records = {
        name: NodeRecord(run_key=c.run_key, healthy_since=NOW - 300, last_probe_at=NOW - 1)
        for name, c in observation.containers.items()
    }
    return cluster, planning.plan(cluster, observation, records, NOW, lambda: 0.0, POLICY)


def plan_of(
    states: Mapping[str, NodeState | tuple[NodeState, str | None]],
    records: Mapping[str, NodeRecord] | None = None,
    cluster_state: ClusterState = ClusterState.DEGRADED,
) -> Plan:
    """A plan whose nodes are in the given states (with a reason when given as a pair)."""
    views = {}
    for name, given in states.items():
        state, reason = given if isinstance(given, tuple) else (given, None)
        views[name] = NodeView(state, reason)
    return Plan((), dict(records or {}), views, True, "meta ready", cluster_state, None)
