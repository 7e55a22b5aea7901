"""The budget gate's second step (decisions/gate.py), through the real planner: a recreate of a
running container waits while the agents' files differ; why a node counts against the budget."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ceres_supervisor.decisions.gate import down_reason
from ceres_supervisor.decisions.planning import Budget, LeaseStatus, NodeState, NodeView
from ceres_supervisor.desired import containers

from .test_planning import actions, build, container, healthy_records, observation, plan, probe, running

DIFFER = "127.0.0.2 runs spec 9f2c, this file is spec 77ab"


@pytest.fixture
def cluster(tmp_path: Path) -> containers.DesiredCluster:
    return build(tmp_path)


@pytest.mark.parametrize("changed", ["meta0", "db1"])
def test_changes_wait_while_the_agents_files_differ(cluster: containers.DesiredCluster, changed: str) -> None:
    """An agent with another file must not roll its nodes to a spec the others do not share: the
    recreate waits, saying who runs what, and goes once the files agree."""
    cs, _ = running(cluster)
    observed = [replace(c, spec_hash="old") if c.node == changed else c for c in cs]
    obs = observation(cluster, observed, probes={c.node: probe(c) for c in observed})
    waiting = plan(cluster, obs, healthy_records(observed), budget=Budget(files_differ=DIFFER))
    assert actions(waiting) == []
    assert f"waiting until every agent runs the same file ({DIFFER})" in (waiting.views[changed].reason or "")
    going = plan(cluster, obs, healthy_records(observed), budget=Budget())
    assert actions(going) == [("recreate", changed)]


def test_a_crash_is_restarted_even_while_the_files_differ(cluster: containers.DesiredCluster) -> None:
    cs, probes = running(cluster)
    first = plan(cluster, observation(cluster, cs, probes=probes), healthy_records(cs))
    dead = container(cluster, "db0", "exited", exit_code=137)
    p = plan(
        cluster,
        observation(cluster, [cs[0], dead, cs[2]], probes=probes),
        first.records,
        budget=Budget(files_differ=DIFFER),
    )
    assert actions(p) == [("start", "db0")]


@pytest.mark.parametrize(
    ("view", "why"),
    [
        (NodeView(NodeState.HEALTHY, None, available=True), None),
        (NodeView(NodeState.HEALTHY, None, lease=LeaseStatus(None, (), "etcd unreadable")), "lease unknown"),
        (NodeView(NodeState.HEALTHY, None), "etcd not healthy"),
        (NodeView(NodeState.BACKOFF, "exit 1"), "not running"),
        (NodeView(NodeState.CRASHLOOP, "exit 1"), "not running"),
        (NodeView(NodeState.STOPPED, None), "not running"),
        (NodeView(NodeState.PAUSED, "running"), "paused"),
        (NodeView(NodeState.STARTING, None), "starting"),
        (NodeView(NodeState.REOPENING, None), "reopening"),
        (NodeView(NodeState.UNHEALTHY, None), "unhealthy"),
    ],
)
def test_why_a_node_counts_against_the_budget(view: NodeView, why: str | None) -> None:
    assert down_reason(view) == why
