"""What the rest of the cluster says about each CeresDB node's shards (decisions/nodes.py
`lease_contexts`): which other assigned nodes CeresMeta counts as offline, how many shards wait
cluster-wide, and which shards an earlier run still locks. Pure: a cycle of plain data in, the
contexts out, compared whole."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ceres_supervisor.decisions import nodes
from ceres_supervisor.decisions.leases import Context, Memory
from ceres_supervisor.decisions.planning import Budget, Controls, NodeRecord
from ceres_supervisor.desired.containers import DesiredCluster
from ceres_supervisor.model.observed import LeaseView, ObservedContainer, ShardLock
from ceres_supervisor.model.versions import Pace

from .test_planning import NOW, POLICY, THREE, WALL, build, container, observation

DB0, DB1, DB2 = "127.0.0.1:8831", "127.0.0.1:8832", "127.0.0.1:8833"
GONE = "10.0.0.9:8831"
"""An endpoint meta still assigns shards to that is in no node of the file."""
BEFORE_START = datetime(2025, 12, 31, tzinfo=UTC).timestamp()
"""A lease first seen before the containers started (2026-01-01 00:00:01): an earlier run's."""


def contexts(
    cluster: DesiredCluster,
    found: list[ObservedContainer],
    leases: LeaseView | None,
    records: dict[str, NodeRecord] | None = None,
    budget: Budget | None = None,
) -> dict[str, Context]:
    obs = replace(observation(cluster, found), leases=leases)
    cycle = nodes.Cycle(
        cluster, obs, POLICY, NOW, lambda: 0.0, True, "meta ready", budget or Budget(), Controls()
    )
    return nodes.lease_contexts(cycle, records or {})


def pace(cluster: DesiredCluster) -> Pace:
    return Pace.of(cluster.spec.release.version, cluster.spec.ceresdb.lease)


@pytest.mark.parametrize(
    "leases", [None, LeaseView(NOW, WALL, error="etcd: timed out")], ids=["not-read", "unreadable"]
)
def test_without_a_reading_of_the_locks_every_node_s_context_is_the_empty_one(
    tmp_path: Path, leases: LeaseView | None
) -> None:
    """Nothing is known of the others: none offline, none pending, no old lock; only the version's
    pace and the file's lease_grace."""
    cluster = build(tmp_path)
    empty = Context(pace(cluster), (), 0, (), 60.0)
    assert contexts(cluster, [container(cluster, "db0")], leases) == {"db0": empty, "db1": empty}


def test_a_local_node_is_online_only_while_its_container_runs_and_an_unknown_endpoint_never(
    tmp_path: Path,
) -> None:
    """db0 runs, db1's container exited, db2 has none, and meta assigns shards to an endpoint of
    no node in the file: each node is told of the others offline, by name (the unknown one by
    its endpoint), never of itself."""
    cluster = build(tmp_path, THREE)
    found = [container(cluster, "db0"), container(cluster, "db1", "exited", exit_code=1)]
    assigned = {DB0: (0,), DB1: (1,), DB2: (2,), GONE: (3,)}
    locks = {0: ShardLock(DB0, 7)}
    got = contexts(cluster, found, LeaseView(NOW, WALL, assigned, locks))
    p = pace(cluster)
    assert got == {
        "db0": Context(p, (GONE, "db1", "db2"), 3, (), 60.0),
        "db1": Context(p, (GONE, "db2"), 3, (), 60.0),
        "db2": Context(p, (GONE, "db1"), 3, (), 60.0),
    }


def test_a_node_of_another_machine_is_offline_only_when_its_agent_says_it_is_not_running(
    tmp_path: Path,
) -> None:
    """Another machine's node is judged by what its agent published: "not running" is offline;
    unhealthy is still online (it heartbeats), and a node nobody published may well be online."""
    cluster = build(tmp_path, THREE, local=False)
    peers = {"db1": ("ceresdb", "not running"), "db2": ("ceresdb", "unhealthy")}
    assigned = {DB0: (0,), DB1: (1,), DB2: (2,)}
    locks = {0: ShardLock(DB0, 7), 1: ShardLock(DB1, 8), 2: ShardLock(DB2, 9)}
    got = contexts(cluster, [], LeaseView(NOW, WALL, assigned, locks), budget=Budget(peers=peers))
    p = pace(cluster)
    assert got == {
        "db0": Context(p, ("db1",), 0, (), 60.0),
        "db1": Context(p, (), 0, (), 60.0),
        "db2": Context(p, ("db1",), 0, (), 60.0),
    }


def test_shards_an_earlier_run_still_locks_are_gathered_from_every_local_node_and_wait(
    tmp_path: Path,
) -> None:
    """db0's shard 0 and db1's shard 1 are locked by leases first seen before their containers
    started: both are old locks, and both count as pending with the unlocked shard 3; db0's
    shard 2, locked by its current run, does not."""
    cluster = build(tmp_path)
    found = [container(cluster, "db0"), container(cluster, "db1")]
    records = {
        "db0": NodeRecord(lease=Memory(first_seen=((7, BEFORE_START),))),
        "db1": NodeRecord(lease=Memory(first_seen=((8, BEFORE_START),))),
    }
    assigned = {DB0: (0, 2), DB1: (1, 3)}
    locks = {0: ShardLock(DB0, 7), 1: ShardLock(DB1, 8), 2: ShardLock(DB0, 9)}
    got = contexts(cluster, found, LeaseView(NOW, WALL, assigned, locks), records)
    old = Context(pace(cluster), (), 3, (0, 1), 60.0)
    assert got == {"db0": old, "db1": old}
