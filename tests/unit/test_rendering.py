"""Rendered files, parsed back, checked against every pitfall of the reference."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest

from ceres_supervisor.cli import commands
from ceres_supervisor.desired import containers, files, loading, rendering, secrets
from ceres_supervisor.model import durations, versions
from ceres_supervisor.model.spec import DesiredState

from .conftest import BASE

THREE_META = "etc/ceres-supervisor/examples/three-meta.toml"
VERSIONS = ["1.2.2", "1.2.4", "1.2.6", "1.2.7"]


def spec_of(text: str, tmp_path: Path) -> DesiredState:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return loading.load(path).spec


def versioned(version: str, flavor: str = "ceresdb") -> str:
    """BASE at `version`; from 1.2.6 db1 gets its own PostgreSQL port (both share a machine)."""
    text = BASE.replace("[cluster]\n", f'[cluster]\nversion = "{version}"\nflavor = "{flavor}"\n')
    if versions.parse_version(version) >= versions.V1_2_6:
        text = text.replace("mysql_port = 3308", "mysql_port = 3308\npostgresql_port = 5434")
    return text


def parsed(node: rendering.RenderedNode) -> dict[str, Any]:
    """Materialize, write as TOML text and parse it back, as the server would read it."""
    return tomllib.loads(rendering.to_toml(rendering.materialize(node.document, secrets.resolve)))


def by_role(
    spec: DesiredState,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[rendering.RenderedNode]]:
    nodes = rendering.render(spec)
    return (
        [parsed(n) for n in nodes if n.role == "meta"],
        [parsed(n) for n in nodes if n.role == "ceresdb"],
        nodes,
    )


def test_node_address_and_server_addr_env_have_no_port(tmp_path: Path) -> None:
    spec = spec_of(Path(THREE_META).read_text(), tmp_path)
    _meta, dbs, nodes = by_role(spec)
    for doc, node, declared in zip(
        dbs, [n for n in nodes if n.role == "ceresdb"], spec.ceresdb.nodes, strict=True
    ):
        assert doc["node"]["addr"] == declared.host
        assert ":" not in doc["node"]["addr"]
        assert node.env == {"CERESDB_SERVER_ADDR": declared.host}
        assert doc["server"]["bind_addr"] == "0.0.0.0"
        assert doc["server"]["grpc_port"] == declared.grpc_port


def test_etcd_client_lists_every_meta_node_and_meta_addr_is_the_client_port(tmp_path: Path) -> None:
    spec = spec_of(Path(THREE_META).read_text(), tmp_path)
    _meta, dbs, _ = by_role(spec)
    expected = ["127.0.0.1:2379", "127.0.0.2:12379", "127.0.0.3:22379"]
    for doc in dbs:
        etcd = doc["cluster_deployment"]["etcd_client"]
        assert etcd["server_addrs"] == expected
        assert etcd["root_path"] == "/ceresdb"
        assert etcd["shard_lock_lease_ttl_sec"] == 30
        client = doc["cluster_deployment"]["meta_client"]
        assert client["meta_addr"] == "http://127.0.0.1:2379"  # a meta node on the same machine
        assert client["cluster_name"] == "defaultCluster"
        assert (client["lease"], client["timeout"]) == ("10s", "5s")
        assert doc["cluster_deployment"]["mode"] == "WithMeta"


def test_meta_addr_prefers_a_meta_node_on_the_same_machine(tmp_path: Path) -> None:
    text = BASE.replace(
        '[[ceresdb.nodes]]\nname = "db0"',
        '[[meta.nodes]]\nname = "m1"\nhost = "10.9.0.1"\n[[meta.nodes]]\nname = "m2"\n'
        'host = "10.9.0.2"\n\n[[ceresdb.nodes]]\nname = "db0"',
        1,
    )
    text = text.replace('name = "db0"\nhost = "127.0.0.1"', 'name = "db0"\nhost = "10.9.0.2"')
    spec = spec_of(text, tmp_path)
    node0 = rendering.render_ceresdb(spec, spec.ceresdb.nodes[0])
    assert node0.document["cluster_deployment"]["meta_client"]["meta_addr"] == "http://10.9.0.2:2379"
    node1 = rendering.render_ceresdb(spec, spec.ceresdb.nodes[1])
    assert node1.document["cluster_deployment"]["meta_client"]["meta_addr"] == "http://127.0.0.1:2379"


def test_meta_addr_override(tmp_path: Path) -> None:
    spec = spec_of(BASE + '\n[ceresdb]\nmeta_addr = "http://meta.example:2379"\n', tmp_path)
    _m, dbs, _ = by_role(spec)
    assert {d["cluster_deployment"]["meta_client"]["meta_addr"] for d in dbs} == {"http://meta.example:2379"}


REMOVED = [
    "background_thread_num",
    "write_group_worker_num",
    "write_group_command_channel_cap",
    "compaction_config",
    "deploy_mode",
]


def _all_keys(doc: dict[str, Any]) -> set[str]:
    keys = set()
    for key, value in doc.items():
        keys.add(key)
        if isinstance(value, dict):
            keys |= _all_keys(value)
    return keys


@pytest.mark.parametrize("version", VERSIONS)
def test_removed_keys_are_never_rendered(tmp_path: Path, version: str) -> None:
    _m, dbs, _ = by_role(spec_of(versioned(version), tmp_path))
    for doc in dbs:
        assert not set(REMOVED) & _all_keys(doc)
        assert set(doc) <= versions.DB_TOP_LEVEL_KEYS
        # What the seed meant, under the names the server reads.
        assert doc["analytic"]["compaction"]["schedule_interval"] == "30m"
        assert set(doc["analytic"]["manifest"]) == {
            "scan_batch_size",
            "snapshot_every_n_updates",
            "scan_timeout",
            "store_timeout",
        }


def test_node_count_is_derived_and_initial_cluster_is_shared(tmp_path: Path) -> None:
    spec = spec_of(Path(THREE_META).read_text(), tmp_path)
    metas, _dbs, _ = by_role(spec)
    assert len(metas) == 3
    assert {m["default-cluster-node-count"] for m in metas} == {len(spec.ceresdb.nodes)}
    assert len({m["initial-cluster"] for m in metas}) == 1
    for doc in metas:
        members = dict(e.split("=", 1) for e in doc["initial-cluster"].split(","))
        assert members[doc["node-name"]] == doc["advertise-peer-urls"]
        assert doc["advertise-client-urls"].startswith("http://127.0.0.")
        assert doc["client-urls"].startswith("http://0.0.0.0:")
        assert doc["default-cluster-shard-total"] == 8
        assert doc["topology-type"] == "static"
        assert doc["storage-root-path"] == "/ceresdb"
        assert doc["log"] == {"level": "info"} and doc["etcd-log"] == {"level": "info"}


def test_a_ceresdb_node_added_in_dynamic_topology_does_not_recreate_meta(tmp_path: Path) -> None:
    """`default-cluster-node-count` (and the shard total) are read only when meta creates the
    cluster: the file meta would read changes, the running member's spec hash does not."""
    text = BASE.replace("[[meta.nodes]]\n", '[meta]\ntopology = "dynamic"\n\n[[meta.nodes]]\n', 1)
    one = text[: text.index('[[ceresdb.nodes]]\nname = "db1"')]
    desired = [containers.build(spec_of(t, tmp_path), secrets.resolve, lambda _h: True) for t in (text, one)]
    metas = [next(n for n in d.nodes if n.name == "meta0") for d in desired]
    assert metas[0].config_text != metas[1].config_text
    assert metas[0].spec_hash == metas[1].spec_hash
    with_log = text.replace("[meta]\n", '[meta]\nconfig = { etcd-log = { level = "debug" } }\n', 1)
    changed = containers.build(spec_of(with_log, tmp_path), secrets.resolve, lambda _h: True)
    assert next(n for n in changed.nodes if n.name == "meta0").spec_hash != metas[0].spec_hash


@pytest.mark.parametrize(
    ("version", "key", "health"),
    [
        ("1.2.2", "default-http-port", "/api/v1/healthCheck"),
        ("1.2.6", "default-http-port", "/api/v1/healthCheck"),
        ("1.2.7", "http-port", "/api/v1/health"),
        ("2.0.0", "http-port", "/api/v1/health"),
    ],
)
def test_meta_http_port_key_switches_at_1_2_7(tmp_path: Path, version: str, key: str, health: str) -> None:
    flavor = "horaedb" if version.startswith("2") else "ceresdb"
    spec = spec_of(versioned(version, flavor), tmp_path)
    metas, _dbs, _ = by_role(spec)
    other = "http-port" if key == "default-http-port" else "default-http-port"
    assert metas[0][key] == 8080
    assert other not in metas[0]
    assert spec.release.meta_health_path == health


@pytest.mark.parametrize(
    ("version", "has_pg"), [("1.2.2", False), ("1.2.4", False), ("1.2.6", True), ("1.2.7", True)]
)
def test_postgresql_port_from_1_2_6(tmp_path: Path, version: str, has_pg: bool) -> None:
    _m, dbs, _ = by_role(spec_of(versioned(version), tmp_path))
    assert ("postgresql_port" in dbs[0]["server"]) is has_pg


def test_postgresql_ports_must_differ_on_one_machine(tmp_path: Path) -> None:
    """From 1.2.6 every node also listens on 5433: two nodes on one machine need their own."""
    with pytest.raises(loading.DesiredStateError, match=r"ceresdb.nodes\[1\].postgresql_port: port 5433"):
        spec_of(BASE.replace("[cluster]\n", '[cluster]\nversion = "1.2.6"\n'), tmp_path)


@pytest.mark.parametrize(
    ("version", "key", "value"),
    [
        ("1.2.2", "boost_broker", '"k:9092"'),
        ("1.2.4", "boost_brokers", '["k:9092", "k2:9092"]'),
    ],
)
def test_kafka_broker_key_by_version(tmp_path: Path, version: str, key: str, value: str) -> None:
    text = (
        versioned(version) + f'\n[ceresdb.wal]\ntype = "Kafka"\n[ceresdb.wal.kafka.client]\n{key} = {value}\n'
    )
    _m, dbs, _ = by_role(spec_of(text, tmp_path))
    assert dbs[0]["analytic"]["wal"] == {
        "type": "Kafka",
        "kafka": {"client": {key: tomllib.loads(f"v={value}")["v"]}},
    }


def test_s3_from_1_2_4(tmp_path: Path) -> None:
    text = versioned("1.2.4") + (
        '\n[ceresdb.object_store]\ntype = "S3"\nregion = "r"\nkey_id = "k"\nkey_secret = "s"\n'
        'endpoint = "e"\nbucket = "b"\nprefix = "p"\nretry = { max_retries = 3, retry_timeout = "5s" }\n'
    )
    _m, dbs, _ = by_role(spec_of(text, tmp_path))
    store = dbs[0]["analytic"]["storage"]["object_store"]
    assert (
        store["type"] == "S3"
        and store["region"] == "r"
        and store["retry"] == {"max_retries": 3, "retry_timeout": "5s"}
    )
    assert "data_dir" not in store


def test_horaedb_flavor(tmp_path: Path) -> None:
    spec = spec_of(Path("etc/ceres-supervisor/examples/horaedb.toml").read_text(), tmp_path)
    metas, dbs, nodes = by_role(spec)
    assert metas[0]["storage-root-path"] == "/horaedb"
    assert metas[0]["http-port"] == 8080
    for doc in dbs:
        assert doc["cluster_deployment"]["etcd_client"]["root_path"] == "/horaedb"
        # Off, said aloud: with it a restarted node keeps its predecessor's lock and lease.
        assert doc["cluster_deployment"]["etcd_client"]["enable_shard_lock_fast_reacquire"] is False
        assert doc["analytic"]["wal"]["data_dir"].startswith("/home/admin/data/horaedb/")
    meta, db = nodes[0], nodes[1]
    assert (meta.config_name, meta.config_mount) == ("horaemeta.toml", "/etc/horaemeta/horaemeta.toml")
    assert (db.config_name, db.config_mount) == ("horaedb.toml", "/etc/horaedb/horaedb.toml")
    assert db.env == {"HORAEDB_SERVER_ADDR": "127.0.0.1"}
    assert spec.meta.image == "apache/horaemeta-server:v2.0.0"
    assert spec.ceresdb.image == "apache/horaedb-server:v2.0.0"


def test_horaedb_keeping_ceresdb_data_renders_the_old_roots_and_catalog(tmp_path: Path) -> None:
    """horaedb 1a452f2c (#1455): HORAEDB_DEFAULT_CATALOG=ceresdb and both roots at the 1.x root."""
    text = Path("etc/ceres-supervisor/examples/horaedb.toml").read_text()
    spec = spec_of(text.replace("[cluster]\n", "[cluster]\nkeep_ceresdb_data = true\n"), tmp_path)
    metas, dbs, nodes = by_role(spec)
    assert metas[0]["storage-root-path"] == "/ceresdb"
    for doc in dbs:
        assert doc["cluster_deployment"]["etcd_client"]["root_path"] == "/ceresdb"
    assert nodes[1].env == {"HORAEDB_SERVER_ADDR": "127.0.0.1", "HORAEDB_DEFAULT_CATALOG": "ceresdb"}
    assert spec.release.root_path == "/ceresdb" and spec.release.meta_leader_key == "/ceresdb/members/leader"


def test_default_images_follow_the_version(tmp_path: Path) -> None:
    spec = spec_of(versioned("1.2.7"), tmp_path)
    assert spec.meta.image == "ceresdb/ceresmeta-server:v1.2.7"
    assert spec.ceresdb.image == "ceresdb/ceresdb-server:v1.2.7"


def test_config_tables_merge_global_then_node(tmp_path: Path) -> None:
    text = BASE.replace('name = "db1"', 'name = "db1"\nconfig = { logger = { level = "debug" } }') + (
        '\n[ceresdb.config.logger]\nlevel = "warn"\n[ceresdb.config.analytic.compaction]\nmax_ongoing_tasks = 2\n'
        "\n[meta.config]\netcd-start-timeout-ms = 30000\n"
    )
    metas, dbs, _ = by_role(spec_of(text, tmp_path))
    assert [d["logger"]["level"] for d in dbs] == ["warn", "debug"]
    assert dbs[0]["analytic"]["compaction"] == {
        "schedule_channel_len": 16,
        "schedule_interval": "30m",
        "max_ongoing_tasks": 2,
        "memory_limit": "4G",
    }
    assert metas[0]["etcd-start-timeout-ms"] == 30000


@pytest.mark.parametrize(
    "example",
    sorted(Path("etc/ceres-supervisor/examples").glob("*.toml"))
    + [Path("etc/ceres-supervisor/cluster.toml")],
    ids=lambda p: p.name,
)
def test_every_example_validates_and_renders(tmp_path: Path, monkeypatch, capsys, example: Path) -> None:
    for name in (
        "CERES_OBKV_PASSWORD",
        "CERES_OBKV_SYS_PASSWORD",
        "CERES_OSS_KEY_ID",
        "CERES_OSS_KEY_SECRET",
    ):
        monkeypatch.setenv(name, f"value-of-{name}")
    text = example.read_text()
    for secret in ("oss-key-id", "oss-key-secret"):  # the file-secret example's files
        (tmp_path / secret).write_text(f"value-of-{secret}\n")
        text = text.replace(f"/etc/ceres-supervisor/secrets/{secret}", str(tmp_path / secret))
    source = tmp_path / example.name
    source.write_text(text)
    out = tmp_path / "out"
    assert commands.main(["validate", "-c", str(source)]) == 0
    assert commands.main(["render", "-c", str(source), "-o", str(out)]) == 0
    spec = loading.load(source).spec
    for node in rendering.render(spec):
        directory = out / node.name
        config = tomllib.loads((directory / node.config_name).read_text())
        assert config == parsed(node)
        env = (directory / "env").read_text()
        assert env == "".join(f"{k}={v}\n" for k, v in node.env.items())
        mode = stat.S_IMODE(os.stat(directory / node.config_name).st_mode)
        assert mode == (0o600 if node.has_secret else 0o644), node.name
    assert capsys.readouterr().out.count(str(out)) == 2 * len(rendering.render(spec))


def test_file_with_a_secret_is_0600_and_holds_the_value(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CERES_TEST_KEY", "the-key")
    obkv = (
        '\n[ceresdb.wal]\ntype = "Obkv"\n[ceresdb.wal.obkv]\nfull_user_name = "u"\nparam_url = "p"\n'
        'password = { env = "CERES_TEST_KEY" }\n[ceresdb.wal.obkv.client]\nsys_user_name = "s"\nsys_password = "x"\n'
    )
    spec = spec_of(BASE + obkv, tmp_path)
    metas_and_dbs = rendering.render(spec)
    meta, db = metas_and_dbs[0], metas_and_dbs[1]
    written = files.write_node(tmp_path / "db0", db, secrets.resolve)
    assert stat.S_IMODE(written[0].stat().st_mode) == 0o600
    assert tomllib.loads(written[0].read_text())["analytic"]["wal"]["obkv"]["password"] == "the-key"
    assert "the-key" not in rendering.to_toml(rendering.redacted(db.document))
    assert not meta.has_secret


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "d" / "f.toml"
    assert files.write_atomic(target, b"a = 1\n", 0o644)
    assert files.write_atomic(target, b"a = 2\n", 0o600)
    assert target.read_bytes() == b"a = 2\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert not files.write_atomic(target, b"a = 2\n", 0o600)  # unchanged: nothing written
    assert [p.name for p in target.parent.iterdir()] == ["f.toml"]


@pytest.mark.parametrize(
    ("text", "seconds", "back"),
    [
        ("500ms", 0.5, "500ms"),
        ("5s", 5, "5s"),
        ("10m", 600, "10m"),
        ("1h", 3600, "1h"),
        ("1.5s", 1.5, "1500ms"),
    ],
)
def test_durations_round_trip(text: str, seconds: float, back: str) -> None:
    assert durations.parse_duration(text) == seconds
    assert durations.format_duration(seconds) == back


@pytest.mark.parametrize(("version", "rendered"), [("1.2.7", False), ("2.0.0", True)])
def test_fast_reacquire_is_rendered_off_where_the_key_exists(
    tmp_path: Path, version: str, rendered: bool
) -> None:
    flavor = "horaedb" if version.startswith("2") else "ceresdb"
    _m, dbs, _ = by_role(spec_of(versioned(version, flavor), tmp_path))
    etcd_client = dbs[0]["cluster_deployment"]["etcd_client"]
    assert ("enable_shard_lock_fast_reacquire" in etcd_client) is rendered
    assert etcd_client.get("enable_shard_lock_fast_reacquire", False) is False
