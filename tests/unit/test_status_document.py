"""The /v1/status document (README, The status API) of one snapshot, and the per-cycle reports: pure, from
real desired clusters, observations and plans (tests/unit/scenes.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ceres_supervisor.decisions.planning import (
    ClusterState,
    Controls,
    ExitInfo,
    LeaseStatus,
    NodeRecord,
    NodeState,
    NodeView,
)
from ceres_supervisor.model.observed import ObservedContainer
from ceres_supervisor.surfaces import reports, status_document

from .scenes import META3, NOW, WALL, build, healthy, snapshot
from .test_planning import container

NODE_KEYS = {
    "name", "role", "host", "ports", "container_id", "image", "state", "reason", "health", "lease",
    "restarts", "last_exit", "next_restart_at", "started_at",
}  # fmt: skip
"""Every field of a node of /v1/status: each present, null when it has no value."""


@pytest.fixture
def cluster(tmp_path: Path) -> Any:
    return build(tmp_path, META3)


def test_rfc3339_is_utc_with_milliseconds_and_null_for_nothing() -> None:
    assert status_document.rfc3339(None) is None
    assert (
        status_document.rfc3339(datetime(2026, 11, 26, 4, 0, 0, 123456, tzinfo=UTC))
        == "2026-11-26T04:00:00.123Z"
    )


def test_before_the_first_observation_every_node_is_pending_and_nothing_is_claimed(cluster: Any) -> None:
    doc = status_document.document(snapshot(cluster), (True, None, None))
    assert set(doc) == {"cluster", "reload", "engine", "meta", "nodes", "orphans", "observed_at", "backup"}
    assert doc["cluster"] == {"name": "defaultCluster", "state": "starting", "spec_hash": cluster.spec_hash}
    assert doc["reload"] == {"ok": True, "error": None, "at": None}
    assert doc["engine"] == {"ok": True, "error": None}
    assert doc["meta"] == {"ready": False, "detail": "not observed yet", "leader": None}
    assert doc["orphans"] == [] and doc["observed_at"] is None
    for node in doc["nodes"]:
        assert set(node) == NODE_KEYS
        assert (node["state"], node["reason"], node["container_id"], node["started_at"]) == (
            "pending",
            "not observed yet",
            None,
            None,
        )
        assert node["health"] == {"ok": None, "detail": None, "checked_at": None}
        assert node["image"] == cluster.node(node["name"]).container.image
        expected: dict[str, Any] | None = (
            None if node["role"] == "meta" else {"held": None, "shards": [], "detail": None}
        )
        assert node["lease"] == expected


def test_while_docker_cannot_be_observed_the_nodes_say_why_and_the_cluster_is_unknown(cluster: Any) -> None:
    doc = status_document.document(snapshot(cluster, engine_error="no socket"), (True, None, None))
    assert doc["cluster"]["state"] == "unknown"
    assert doc["engine"] == {"ok": False, "error": "no socket"}
    assert doc["meta"]["detail"] == "waiting for the Docker Engine (see engine.error)"
    assert {n["reason"] for n in doc["nodes"]} == {"waiting for the Docker Engine (see engine.error)"}


def test_a_healthy_cluster_shows_each_node_s_container_probe_and_ports(cluster: Any) -> None:
    obs, plan = healthy(cluster)
    doc = status_document.document(snapshot(cluster, obs, plan), (False, "bad", WALL))
    assert doc["cluster"]["state"] == "healthy" and doc["reload"] == {
        "ok": False,
        "error": "bad",
        "at": "2026-11-26T00:00:00.000Z",
    }
    assert doc["meta"] == {"ready": True, "detail": "meta ready", "leader": "meta0"}
    assert doc["observed_at"] == "2026-11-26T00:00:00.000Z"
    nodes = {n["name"]: n for n in doc["nodes"]}
    meta, db = nodes["meta1"], nodes["db1"]
    assert meta["ports"] == {"client": 12379, "peer": 12380, "http": 8081} and meta["lease"] is None
    assert db["ports"] == {"grpc": 8832, "http": 5441, "mysql": 3308}
    assert (db["state"], db["reason"], db["container_id"], db["image"]) == ("healthy", None, "id-db1", "img")
    assert db["health"] == {"ok": True, "detail": "GET / 200", "checked_at": "2026-11-26T00:00:00.000Z"}
    assert db["started_at"] == "2026-01-01T00:00:01.000Z"
    assert db["lease"] == {"held": None, "shards": [], "detail": plan.views["db1"].lease.detail}  # type: ignore[union-attr]


def test_a_probe_of_an_earlier_run_of_the_container_is_not_shown(cluster: Any) -> None:
    obs, plan = healthy(cluster)
    db0 = obs.containers["db0"]
    earlier = replace(obs.probes["db0"], run_id="id-db0@earlier")
    same = replace(obs.probes["db0"], run_id="")  # a probe not tied to a run (meta's): kept
    for result, shown in [(earlier, False), (same, True)]:
        doc = status_document.node_document(
            cluster.node("db0"), plan, replace(obs, probes={"db0": result}), NodeRecord(), ""
        )
        assert (doc["health"]["ok"] is True) is shown, result
    assert db0.is_running


@pytest.mark.parametrize(
    ("lease", "expected"),
    [
        (None, {"held": None, "shards": [], "detail": "not judged"}),
        (LeaseStatus(True, (0, 3), None), {"held": True, "shards": [0, 3], "detail": None}),
        (
            LeaseStatus(False, (), "shard 1 has no lock"),
            {"held": False, "shards": [], "detail": "shard 1 has no lock"},
        ),
    ],
)
def test_a_ceresdb_node_s_lease_as_judged(
    cluster: Any, lease: LeaseStatus | None, expected: dict[str, Any]
) -> None:
    obs, plan = healthy(cluster)
    plan = replace(plan, views={**plan.views, "db0": NodeView(NodeState.HEALTHY, None, lease=lease)})
    doc = status_document.node_document(cluster.node("db0"), plan, obs, NodeRecord(), "")
    assert doc["lease"] == expected


def test_an_exited_node_shows_its_last_exit_and_when_it_restarts(cluster: Any) -> None:
    obs, plan = healthy(cluster)
    dead = container(cluster, "db0", "exited", exit_code=137)
    obs = replace(obs, containers={**obs.containers, "db0": dead})
    view = NodeView(NodeState.BACKOFF, "exit 137 (SIGKILL)", next_restart_at=NOW + 4)
    plan = replace(plan, views={**plan.views, "db0": view})
    record = NodeRecord(restarts=2, last_exit=ExitInfo(137, True, datetime(2026, 11, 26, 3, 59, tzinfo=UTC)))
    doc = status_document.node_document(cluster.node("db0"), plan, obs, record, "")
    assert (doc["state"], doc["reason"], doc["restarts"]) == ("backoff", "exit 137 (SIGKILL)", 2)
    assert doc["last_exit"] == {"code": 137, "oom": True, "at": "2026-11-26T03:59:00.000Z"}
    assert doc["next_restart_at"] == status_document.rfc3339(WALL + timedelta(seconds=4))
    assert doc["started_at"] is None and doc["container_id"] == "id-db0"


def test_orphans_are_listed_with_their_node(cluster: Any) -> None:
    obs, plan = healthy(cluster)
    orphan = ObservedContainer("id-x", "ceres-defaultCluster-db9", "db9", "ceresdb", "old", "running", "img")
    doc = status_document.document(
        snapshot(cluster, replace(obs, orphans=(orphan,)), plan), (True, None, None)
    )
    assert doc["orphans"] == [{"name": "ceres-defaultCluster-db9", "node": "db9", "container_id": "id-x"}]


# --- reports ---------------------------------------------------------------------------------------------


def with_views(plan: Any, **states: NodeState) -> Any:
    return replace(plan, views={**plan.views, **{n: NodeView(s, "why") for n, s in states.items()}})


@pytest.mark.parametrize(
    ("states", "engine_error", "reload_error", "line"),
    [
        ({}, None, None, "healthy: 6/6 nodes healthy"),
        ({"db1": NodeState.BACKOFF, "meta2": NodeState.UNHEALTHY}, None, None,
         "healthy: 4/6 nodes healthy; meta2 unhealthy, db1 backoff"),
        ({"db2": NodeState.REMOTE}, None, None, "healthy: 5/5 nodes healthy"),
        ({"db0": NodeState.STARTING}, None, "cluster.toml: invalid\n  cluster.name: cannot change  ",
         "healthy: 5/6 nodes healthy; reload failed: cluster.name: cannot change"),
        ({}, "no socket", None, "unknown: docker engine unavailable: no socket"),
    ],
)  # fmt: skip
def test_the_status_line_says_how_many_nodes_are_healthy_and_what_is_wrong(
    cluster: Any, states: dict[str, NodeState], engine_error: str | None, reload_error: str | None, line: str
) -> None:
    _obs, plan = healthy(cluster)
    assert reports.status_line(with_views(plan, **states), engine_error, reload_error) == line
    assert reports.status_line(None, None, None) == "unknown: docker engine unavailable: None"


def test_an_agent_publishes_only_its_own_nodes(tmp_path: Path) -> None:
    half = build(tmp_path, META3, local=lambda host: host == "127.0.0.1")
    obs, plan = healthy(half)
    assert set(reports.local_documents(half, plan, obs, plan.records)) == {n.name for n in half.nodes}
    remote = build(tmp_path / "r", META3, local=False)
    obs, plan = healthy(remote)
    assert reports.local_documents(remote, plan, obs, plan.records) == {}


def test_nodes_that_cannot_be_observed_are_unknown_and_keep_what_was_last_known(cluster: Any) -> None:
    obs, plan = healthy(cluster)
    last = reports.local_documents(cluster, plan, obs, {"db0": NodeRecord(restarts=4)})
    docs = reports.unknown_documents(cluster, {"db0": last["db0"]}, "docker engine on h cannot be observed")
    assert set(docs) == {n.name for n in cluster.nodes}
    db0, meta0 = docs["db0"], docs["meta0"]
    assert (db0["state"], db0["reason"], db0["container_id"], db0["restarts"]) == (
        "unknown",
        "docker engine on h cannot be observed",
        "id-db0",
        4,
    )
    assert db0["health"] == {
        "ok": None,
        "detail": "docker engine on h cannot be observed",
        "checked_at": None,
    }
    assert db0["lease"] == {"held": None, "shards": [], "detail": "docker engine on h cannot be observed"}
    assert meta0["lease"] is None and meta0["container_id"] is None and meta0["state"] == "unknown"
    assert last["db0"]["state"] == "healthy"  # what was passed in is not changed


def test_outdated_nodes_are_this_agent_s_containers_running_another_spec(cluster: Any) -> None:
    obs, _plan = healthy(cluster)
    changed = {**obs.containers, "meta1": replace(obs.containers["meta1"], spec_hash="old")}
    assert reports.outdated(cluster, changed) == ("meta1",)
    assert reports.outdated(cluster, obs.containers) == ()


@pytest.mark.parametrize(
    ("file", "store", "expected"),
    [
        ((frozenset({"db0"}), False), (frozenset(), False), Controls(frozenset({"db0"}), False)),
        ((frozenset(), False), (frozenset({"db1"}), True), Controls(frozenset({"db1"}), True)),
        ((frozenset({"db0"}), True), (frozenset({"db1"}), False), Controls(frozenset({"db0", "db1"}), True)),
    ],
)
def test_a_pause_holds_when_either_the_file_or_the_store_has_it(
    file: tuple[frozenset[str], bool], store: tuple[frozenset[str], bool], expected: Controls
) -> None:
    assert reports.controls(*file, *store) == expected


def test_the_cluster_state_of_a_snapshot(cluster: Any) -> None:
    obs, plan = healthy(cluster)
    assert snapshot(cluster, obs, plan).cluster_state == ClusterState.HEALTHY
    assert snapshot(cluster).cluster_state == ClusterState.STARTING
    assert snapshot(cluster, obs, plan, engine_error="x").cluster_state == ClusterState.UNKNOWN
