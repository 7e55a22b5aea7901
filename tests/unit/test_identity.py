"""Identity markers of data directories: the judgement (pure, by table), the marker read and written
in a temporary directory, and the planner's `blocked` for a node whose directory is another's."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from ceres_supervisor.decisions import planning
from ceres_supervisor.decisions.planning import NodeState
from ceres_supervisor.desired import identity
from ceres_supervisor.desired.identity import Marker, Owner

from .test_planning import NOW, POLICY, build, container, observation

OWNER = Owner("prod", "ceresdb")
HERE = Path("/state/data/db0")


def marker(cluster: str = "prod", node: str = "db0", flavor: str = "ceresdb") -> Marker:
    return Marker(cluster, node, flavor, "2026-12-01T00:00:00Z")


@pytest.mark.parametrize(
    ("found", "blocked", "names"),
    [
        (marker(), False, ()),
        (marker(flavor="horaedb"), False, ()),  # the flavor is recorded, not compared: 1.x -> 2.0 keeps data
        (marker(node="db1"), True, ("node db1 of cluster prod", "db0 of cluster prod")),
        (marker(cluster="staging"), True, ("node db0 of cluster staging", "db0 of cluster prod")),
        (
            marker(cluster="staging", node="meta0"),
            True,
            ("node meta0 of cluster staging", "db0 of cluster prod"),
        ),
    ],
)
def test_a_directory_marked_for_another_node_or_cluster_is_refused_naming_both(
    found: Marker, blocked: bool, names: tuple[str, ...]
) -> None:
    why = identity.judge(found, OWNER, "db0", HERE)
    assert (why is not None) == blocked
    for name in names:
        assert why is not None and name in why
    if why is not None:
        assert str(HERE) in why and "README" in why


def test_a_new_directory_is_made_and_marked(tmp_path: Path) -> None:
    data = tmp_path / "data" / "db0"
    assert identity.ensure(data, OWNER, "db0") == "created"
    found = identity.read(data)
    assert found is not None and (found.cluster, found.node, found.flavor, found.adopted) == (
        "prod",
        "db0",
        "ceresdb",
        False,
    )
    assert identity.ensure(data, OWNER, "db0") == "kept"


def test_a_directory_from_before_markers_is_adopted_once(tmp_path: Path) -> None:
    data = tmp_path / "db0"
    (data / "wal").mkdir(parents=True)
    assert identity.problems([("db0", data)], OWNER) == {}  # no marker: no problem, it is adopted at start
    assert identity.ensure(data, OWNER, "db0") == "adopted"
    found = identity.read(data)
    assert found is not None and found.adopted and found.node == "db0"
    assert identity.ensure(data, OWNER, "db0") == "kept"


def test_an_empty_directory_is_not_adopted_but_made(tmp_path: Path) -> None:
    data = tmp_path / "db0"
    data.mkdir()
    assert identity.ensure(data, OWNER, "db0") == "created"


def test_ensure_refuses_another_nodes_directory_and_leaves_its_marker(tmp_path: Path) -> None:
    data = tmp_path / "db0"
    identity.ensure(data, OWNER, "db1")
    before = (data / identity.MARKER_NAME).read_bytes()
    with pytest.raises(identity.IdentityError, match="marked for node db1 of cluster prod"):
        identity.ensure(data, OWNER, "db0")
    assert (data / identity.MARKER_NAME).read_bytes() == before


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"{not json", "unreadable identity marker"),
        (json.dumps({"cluster": "prod"}).encode(), "missing or mistyped: node, flavor, created_at"),
        (json.dumps(["prod", "db0"]).encode(), "not a JSON object"),
    ],
)
def test_an_unreadable_marker_is_a_problem_never_adopted_over(
    tmp_path: Path, content: bytes, why: str
) -> None:
    data = tmp_path / "db0"
    data.mkdir()
    (data / identity.MARKER_NAME).write_bytes(content)
    found = identity.problems([("db0", data)], OWNER)
    assert why in found["db0"]
    with pytest.raises(identity.IdentityError):
        identity.ensure(data, OWNER, "db0")
    assert (data / identity.MARKER_NAME).read_bytes() == content


def test_problems_reads_every_directory_and_skips_the_missing(tmp_path: Path) -> None:
    identity.ensure(tmp_path / "db0", OWNER, "db1")  # swapped
    identity.ensure(tmp_path / "db1", OWNER, "db0")
    found = identity.problems(
        [("db0", tmp_path / "db0"), ("db1", tmp_path / "db1"), ("db2", tmp_path / "db2")], OWNER
    )
    assert sorted(found) == ["db0", "db1"]
    assert "marked for node db1" in found["db0"] and "this node, db0" in found["db0"]


@pytest.mark.parametrize("state", ["missing", "exited", "running"])
def test_the_planner_blocks_a_node_on_another_nodes_directory_and_touches_nothing(
    tmp_path: Path, state: str
) -> None:
    cluster = build(tmp_path)
    listed = [container(cluster, "meta0"), container(cluster, "db1")]
    if state != "missing":
        listed.append(container(cluster, "db0", state, exit_code=0 if state == "exited" else None))
    why = identity.judge(marker(node="db1"), OWNER, "db0", HERE)
    assert why is not None
    seen = replace(observation(cluster, listed), identity_problems={"db0": why})
    result = planning.plan(cluster, seen, {}, NOW, lambda: 0.0, POLICY)
    assert result.views["db0"].state is NodeState.BLOCKED
    assert result.views["db0"].reason == why
    assert [a for a in result.actions if a.node == "db0"] == []
    # without the problem, the same observation starts (or keeps) it: the marker alone decided
    plain = planning.plan(cluster, observation(cluster, listed), {}, NOW, lambda: 0.0, POLICY)
    assert plain.views["db0"].state is not NodeState.BLOCKED
