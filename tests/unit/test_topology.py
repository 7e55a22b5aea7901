"""What a static-topology cluster must keep (desired/topology.py), and a reload of the file by a
running daemon (daemon/reloading.py `prepare`): real files, no daemon."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ceres_supervisor.daemon import reloading
from ceres_supervisor.desired import loading, locality, topology
from ceres_supervisor.model.errors import DesiredStateError
from ceres_supervisor.model.spec import DesiredState

from .conftest import BASE
from .scenes import build

DB2 = '\n[[ceresdb.nodes]]\nname = "db2"\nhost = "127.0.0.1"\ngrpc_port = 8833\nhttp_port = 5442\nmysql_port = 3309\n'


def load(tmp_path: Path, text: str = BASE, name: str = "cluster.toml") -> DesiredState:
    path = tmp_path / name
    path.write_text(
        text.replace('state_dir = "/var/lib/ceres-supervisor"', f'state_dir = "{tmp_path}/state"')
    )
    return loading.load(path).spec


def record(tmp_path: Path, doc: object) -> None:
    (tmp_path / "state").mkdir(exist_ok=True)
    (tmp_path / "state" / topology.TOPOLOGY_FILE).write_text(
        json.dumps(doc) if not isinstance(doc, str) else doc
    )


def test_the_first_ready_meta_records_the_ceresdb_nodes_once(tmp_path: Path) -> None:
    desired = build(tmp_path)
    spec = desired.spec
    assert topology.problem(spec) is None  # nothing recorded yet: anything goes
    topology.remember(spec, desired)
    recorded = json.loads((Path(spec.cluster.state_dir) / topology.TOPOLOGY_FILE).read_text())
    assert recorded == {
        "topology": "static",
        "ceresdb_nodes": ["db0", "db1"],
        "endpoints": {"db0": "127.0.0.1:8831", "db1": "127.0.0.1:8832"},
    }
    bigger = build(tmp_path, BASE + DB2)
    topology.remember(bigger.spec, bigger)  # never rewritten
    assert json.loads((Path(spec.cluster.state_dir) / topology.TOPOLOGY_FILE).read_text()) == recorded


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        (BASE + DB2, "ceresdb.nodes",
         "this static-topology cluster started with CeresDB nodes db0, db1; CeresMeta froze that count at first "
         "start, so the set cannot change to db0, db1, db2"),
        (BASE.replace('name = "db1"', 'name = "db9"'), "ceresdb.nodes", "so the set cannot change to db0, db9"),
        (BASE.replace("grpc_port = 8832", "grpc_port = 8842"), "ceresdb.nodes[1]",
         "db1 is 127.0.0.1:8832 in CeresMeta (host:grpc_port); in static topology a node keeps that identity, "
         "else its shards are orphaned (it would come back as 127.0.0.1:8842)"),
    ],
)  # fmt: skip
def test_a_started_static_cluster_keeps_its_ceresdb_nodes_and_their_identities(
    tmp_path: Path, text: str, path: str, message: str
) -> None:
    record(tmp_path, {"topology": "static", "ceresdb_nodes": ["db0", "db1"],
                      "endpoints": {"db0": "127.0.0.1:8831", "db1": "127.0.0.1:8832"}})  # fmt: skip
    problem = topology.problem(load(tmp_path, text))
    assert problem is not None and (problem.path, problem.message.endswith(message)) == (path, True), problem
    assert topology.problem(load(tmp_path, BASE)) is None  # the same nodes: fine


def test_a_dynamic_topology_may_change_its_nodes(tmp_path: Path) -> None:
    record(tmp_path, {"topology": "dynamic", "ceresdb_nodes": ["db0"]})
    assert topology.problem(load(tmp_path, BASE + DB2)) is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot be read"),
        ('["db0"]', "is not a record this supervisor wrote"),
        ('{"ceresdb_nodes": "db0"}', "is not a record this supervisor wrote"),
    ],
)
def test_a_topology_record_that_cannot_be_read_refuses_the_start(
    tmp_path: Path, content: str, message: str
) -> None:
    record(tmp_path, content)
    problem = topology.problem(load(tmp_path))
    assert problem is not None and problem.path == "cluster.state_dir" and message in problem.message


# --- reload ---------------------------------------------------------------------------------------


async def test_a_reload_reads_validates_and_builds_the_new_cluster_without_touching_anything(
    tmp_path: Path,
) -> None:
    running = load(tmp_path)
    path = tmp_path / "cluster.toml"
    path.write_text(path.read_text() + DB2)
    reloaded = await reloading.prepare(str(path), running, locality.Locality(None, {"127.0.0.1": True}))
    assert [n.name for n in reloaded.desired.nodes] == ["meta0", "db0", "db1", "db2"]
    assert reloaded.place.is_local("127.0.0.1") and reloaded.loaded.source == str(path)
    assert not (tmp_path / "state").exists()


async def test_a_reload_is_refused_with_every_key_it_cannot_change(tmp_path: Path) -> None:
    running = load(tmp_path)
    record(tmp_path, {"topology": "static", "ceresdb_nodes": ["db0", "db1"]})
    path = tmp_path / "cluster.toml"
    path.write_text(path.read_text().replace("[cluster]\n", '[cluster]\nname = "other"\n') + DB2)
    with pytest.raises(DesiredStateError) as refused:
        await reloading.prepare(str(path), running, locality.Locality(None, {"127.0.0.1": True}))
    assert [p.path for p in refused.value.problems] == ["ceresdb.nodes", "cluster.name"]


async def test_a_reload_naming_a_host_that_cannot_be_resolved_is_refused(tmp_path: Path) -> None:
    running = load(tmp_path)
    path = tmp_path / "cluster.toml"
    path.write_text(
        path.read_text().replace(
            'name = "db1"\nhost = "127.0.0.1"', 'name = "db1"\nhost = "no-such-host.invalid"'
        )
    )
    with pytest.raises(locality.LocalityError, match=r"cannot resolve node host 'no-such-host\.invalid'"):
        await reloading.prepare(str(path), running, locality.Locality(None, {"127.0.0.1": True}))


@pytest.mark.parametrize(
    ("host", "owned"),
    [
        ("127.0.0.1", True),
        ("127.0.0.9", True),
        ("localhost", True),
        ("192.0.2.1", False),
        ("db-7.example", False),
    ],
)
def test_a_container_label_is_owned_by_address_never_by_a_guess(host: str, owned: bool) -> None:
    place = locality.decide(["localhost"], locality.Locality())
    assert place.owns(host) is owned
    assert locality.Locality("127.0.0.2").owns(host) is (host == "127.0.0.2")
    assert place.hosts() == {"localhost"} and locality.Locality("127.0.0.2").hosts() == {"127.0.0.2"}
