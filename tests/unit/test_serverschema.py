"""`serverschema`: the per-version server config schemas, checked against facts of the sources."""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from ceres_supervisor.desired import loading, rendering, secrets
from ceres_supervisor.desired import serverschema as ss
from ceres_supervisor.model import versions

from .conftest import BASE

DB_VERSIONS = list(ss.CERESDB_VERSIONS + ss.HORAEDB_VERSIONS)
ALL = [pytest.param(v, id=".".join(map(str, v))) for v in DB_VERSIONS]


def db(version: ss.Version, text: str) -> list[ss.Violation]:
    return ss.check(tomllib.loads(text), ss.db_schema(version))


def meta(version: ss.Version, text: str) -> list[ss.Violation]:
    return ss.check(tomllib.loads(text), ss.meta_schema(version))


def brief(violations: list[ss.Violation]) -> list[tuple[str, str]]:
    return [(v.path, v.kind) for v in violations]


def node_at(schema: ss.Table, dotted: str) -> ss.Node:
    """The schema node at `dotted`; "wal:RocksDB" enters a variant; "key" finds "key!" too."""
    node: ss.Node = schema
    for segment in dotted.split("."):
        name, _, variant = segment.partition(":")
        assert isinstance(node, dict), dotted
        node = node[name] if name in node else node[name + "!"]
        if variant:
            assert isinstance(node, ss.Tagged), dotted
            node = node.variants[variant]
    return node


def has(schema: ss.Table, dotted: str) -> bool:
    try:
        node_at(schema, dotted)
    except KeyError:
        return False
    return True


# --- the data is well formed ---------------------------------------------------------------------

_SCALARS = (
    {"str", "bool", "f32", "f64", "duration", "size", "any"}
    | {f"{s}{b}" for s in "ui" for b in (8, 16, 32, 64)}
    | {"usize", "isize", "nonzero[usize]"}
)


def _token_ok(token: str) -> bool:
    token = token.removesuffix("!")
    if token in _SCALARS:
        return True
    if token.startswith("@"):
        return token[1:] in ss.NAMED
    for prefix in ("list[", "map["):
        if token.startswith(prefix) and token.endswith("]"):
            return _token_ok(token[len(prefix) : -1])
    if token.startswith("enum[") and token.endswith("]"):
        alternatives = ss._split_alternatives(token[5:-1])
        for alternative in alternatives:
            name, sep, payload = alternative.partition("=")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or (sep and not _token_ok(payload)):
                return False
        return True
    return False


def _walk(node: ss.Node, path: str, out: list[tuple[str, str]]) -> None:
    if isinstance(node, str):
        out.append((path, node))
    elif isinstance(node, ss.Tagged):
        for name, variant in node.variants.items():
            _walk(variant, f"{path}:{name}", out)
    else:
        for key, child in node.items():
            _walk(child, f"{path}.{key}", out)


def _schemas() -> list[tuple[str, ss.Node]]:
    out: list[tuple[str, ss.Node]] = [(f"NAMED.{k}", v) for k, v in ss.NAMED.items()]
    out += [(f"db{v}", ss.db_schema(v)) for v in DB_VERSIONS]
    out += [(f"meta{v}", ss.meta_schema(v)) for v in DB_VERSIONS]
    return out


def test_versions_are_the_tags_that_exist() -> None:
    assert ss.CERESDB_VERSIONS == ((1, 2, 2), (1, 2, 4), (1, 2, 5), (1, 2, 6), (1, 2, 7))
    assert ss.HORAEDB_VERSIONS == ((2, 0, 0),)
    assert versions.KNOWN_RELEASES == {"ceresdb": ss.CERESDB_VERSIONS, "horaedb": ss.HORAEDB_VERSIONS}
    for bad in ((1, 2, 3), (2, 1, 0), (0, 0, 0)):
        with pytest.raises(ValueError):
            ss.db_schema(bad)
        with pytest.raises(ValueError):
            ss.meta_schema(bad)


@pytest.mark.parametrize(("name", "schema"), _schemas(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_token_is_valid_and_every_reference_resolves(name: str, schema: ss.Node) -> None:
    leaves: list[tuple[str, str]] = []
    _walk(schema, name, leaves)
    assert leaves or isinstance(schema, ss.Tagged)
    bad = [(path, token) for path, token in leaves if not _token_ok(token)]
    assert bad == []


def test_schemas_are_fresh_copies() -> None:
    first = ss.db_schema((1, 2, 2))
    first["node"] = "str"
    node_at(first, "analytic.wal").variants.clear()  # type: ignore[union-attr]
    assert isinstance(ss.db_schema((1, 2, 2))["node"], dict)
    assert node_at(ss.db_schema((1, 2, 2)), "analytic.wal:RocksDB")


# --- what the project renders today is accepted ---------------------------------------------------


def _documents(text: str, tmp_path: Path) -> tuple[ss.Version, list[tuple[str, dict[str, Any]]]]:
    source = tmp_path / "c.toml"
    source.write_text(text)
    spec = loading.load(source).spec
    docs: list[tuple[str, dict[str, Any]]] = [
        (n.role, tomllib.loads(rendering.to_toml(rendering.materialize(n.document, secrets.resolve))))
        for n in rendering.render(spec)
    ]
    return spec.release.version, docs


def _check_all(version: ss.Version, docs: list[tuple[str, dict[str, Any]]]) -> list[ss.Violation]:
    out: list[ss.Violation] = []
    for role, doc in docs:
        out += ss.check(doc, ss.meta_schema(version) if role == "meta" else ss.db_schema(version))
    return out


@pytest.mark.parametrize("version", ALL)
def test_rendered_base_documents_pass_at_every_version(version: ss.Version, tmp_path: Path) -> None:
    label = ".".join(map(str, version))
    flavor = "horaedb" if version >= (2, 0, 0) else "ceresdb"
    text = BASE.replace("[cluster]\n", f'[cluster]\nversion = "{label}"\nflavor = "{flavor}"\n')
    if version >= versions.V1_2_6:
        text = text.replace("mysql_port = 3308", "mysql_port = 3308\npostgresql_port = 5434")
    got_version, docs = _documents(text, tmp_path)
    assert got_version == version
    assert {role for role, _ in docs} == {"meta", "ceresdb"}
    assert _check_all(version, docs) == []


@pytest.mark.parametrize(
    "example",
    sorted(Path("etc/ceres-supervisor/examples").glob("*.toml"))
    + [Path("etc/ceres-supervisor/cluster.toml")],
    ids=lambda p: p.name,
)
def test_rendered_examples_pass(example: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "CERES_OBKV_PASSWORD",
        "CERES_OBKV_SYS_PASSWORD",
        "CERES_OSS_KEY_ID",
        "CERES_OSS_KEY_SECRET",
    ):
        monkeypatch.setenv(name, f"value-of-{name}")
    text = example.read_text()
    for secret in ("oss-key-id", "oss-key-secret"):
        (tmp_path / secret).write_text("v\n")
        text = text.replace(f"/etc/ceres-supervisor/secrets/{secret}", str(tmp_path / secret))
    version, docs = _documents(text, tmp_path)
    assert _check_all(version, docs) == []


MINIMAL_DB = """
[node]
addr = "10.0.0.5"
[server]
bind_addr = "0.0.0.0"
http_port = 5440
grpc_port = 8831
mysql_port = 3307
[logger]
level = "info"
[runtime]
read_thread_num = 20
write_thread_num = 16
[cluster_deployment]
mode = "WithMeta"
[cluster_deployment.meta_client]
cluster_name = "defaultCluster"
meta_addr = "http://10.0.0.1:2379"
lease = "10s"
timeout = "5s"
[cluster_deployment.etcd_client]
server_addrs = ["10.0.0.1:2379"]
root_path = "/ceresdb"
shard_lock_lease_ttl_sec = 30
[analytic]
replay_batch_size = 100
max_replay_tables_per_batch = 128
[analytic.manifest]
scan_batch_size = 100
snapshot_every_n_updates = 10000
scan_timeout = "5s"
store_timeout = "5s"
[analytic.wal]
type = "RocksDB"
data_dir = "/data/wal"
[analytic.storage]
mem_cache_capacity = "20GB"
disk_cache_capacity = "0G"
disk_cache_page_size = "4M"
[analytic.storage.object_store]
type = "Local"
data_dir = "/data/store"
[analytic.table_opts]
arena_block_size = 2097152
write_buffer_size = 33554432
[analytic.compaction]
schedule_interval = "30m"
memory_limit = "4G"
"""

MINIMAL_META = """
node-name = "meta0"
data-dir = "/data"
initial-cluster = "meta0=http://10.0.0.1:2380"
default-cluster-node-count = 2
[log]
level = "info"
[etcd-log]
level = "info"
"""


@pytest.mark.parametrize("version", ALL)
def test_minimal_inline_documents_pass(version: ss.Version) -> None:
    assert db(version, MINIMAL_DB) == []
    port = "default-http-port" if version < (1, 2, 7) else "http-port"
    assert meta(version, f"{port} = 8080\n" + MINIMAL_META) == []


# --- types -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL)
def test_write_buffer_size_is_an_integer_of_bytes(version: ss.Version) -> None:
    (v,) = db(version, '[analytic.table_opts]\nwrite_buffer_size = "32MB"\narena_block_size = 2097152\n')
    assert (v.path, v.kind, v.expected) == ("analytic.table_opts.write_buffer_size", "type", "u32")
    assert "u32" in v.message and "got a string" in v.message
    (v,) = db(version, "[analytic.table_opts]\nwrite_buffer_size = 4294967296\n")
    assert v.kind == "type"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[server]\nhttp_port = 70000", "u16"),
        ("[server]\nhttp_port = -1", "u16"),
        ("[server]\nhttp_port = 5440.0", "u16"),
        ("[server]\nhttp_port = true", "u16"),
        ('[server]\nhttp_port = "5440"', "u16"),
        ("[server]\nauto_create_table = 1", "bool"),
        ("[node]\naddr = 1", "str"),
        ("[runtime]\nread_thread_num = -3", "usize"),
        ("[logger]\nasync_channel_len = 2147483648", "i32"),
        ('[analytic]\npreflush_write_buffer_size_ratio = "0.5"', "f32"),
        (
            '[cluster_deployment]\nmode = "WithMeta"\n[cluster_deployment.etcd_client]\nserver_addrs = "a:2379"',
            "list[str]",
        ),
        (
            '[cluster_deployment]\nmode = "WithMeta"\n[cluster_deployment.etcd_client]\nserver_addrs = ["a", 1]',
            "str",
        ),
        ('[limiter]\nrules = ["AnyQuery", "Nope"]', "enum[QueryWithoutPredicate|AnyQuery|AnyInsert]"),
        ('server = "x"', "table"),
        ("[server.forward]\nkeep_alive_interval = 600", "duration"),
    ],
)
def test_wrong_types_are_type_violations(text: str, expected: str) -> None:
    (v,) = db((1, 2, 2), text)
    assert (v.kind, v.expected) == ("type", expected), v


def test_floats_accept_integers_like_serde() -> None:
    assert db((1, 2, 2), "[analytic]\npreflush_write_buffer_size_ratio = 1") == []


@pytest.mark.parametrize("text", ["5s", "1h30m", " 0.5 h2m ", "300ms", "1d2h3m4s5ms", "", "1.5m", "1e1s"])
def test_durations_accepted_like_readable_duration(text: str) -> None:
    assert ss.duration_error(text) is None
    assert db((1, 2, 2), f'[server]\ntimeout = "{text}"') == []


@pytest.mark.parametrize(
    "text", ["5", "1H", "1S", "1MS", "1h1h", "1m1h", "h", "-1s", "5 sec", "1s2", "five s"]
)
def test_durations_refused_like_readable_duration(text: str) -> None:
    assert ss.duration_error(text) is not None
    (v,) = db((1, 2, 2), f'[server]\ntimeout = "{text}"')
    assert (v.path, v.kind, v.expected) == ("server.timeout", "type", "duration")


@pytest.mark.parametrize(
    "value", ['"64MB"', '"0G"', '"4M"', '"1e6B"', '" 0.5 PB"', '"23"', '"1 KiB"', "1024", "0"]
)
def test_sizes_accepted_like_readable_size(value: str) -> None:
    assert db((1, 2, 2), f"[analytic.storage]\nmem_cache_capacity = {value}") == []


@pytest.mark.parametrize(
    "value", ['"0.5kb"', '"1b"', '"B"', '""', '"1K24B"', '"4B7"', "-1", "1.5", "true", "[1]"]
)
def test_sizes_refused_like_readable_size(value: str) -> None:
    (v,) = db((1, 2, 2), f"[analytic.storage]\nmem_cache_capacity = {value}")
    assert (v.kind, v.expected) == ("type", "size")


# --- required keys and tables ---------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL)
def test_manifest_needs_all_four_keys_until_1_2_5(version: ss.Version) -> None:
    found = db(version, "[analytic.manifest]\nscan_batch_size = 100\n")
    if version < (1, 2, 5):  # HDB v1.2.2/v1.2.4 manifest::details::Options has no serde default
        assert [(v.path, v.kind, v.expected) for v in found] == [
            ("analytic.manifest.snapshot_every_n_updates", "missing", "usize"),
            ("analytic.manifest.scan_timeout", "missing", "duration"),
            ("analytic.manifest.store_timeout", "missing", "duration"),
        ]
        assert all(v.message == "required key is missing" for v in found)
    else:  # 838a6fd4 (#1076): #[serde(default)], snapshot_every_n_updates is a NonZeroUsize
        assert found == []
        (v,) = db(version, "[analytic.manifest]\nsnapshot_every_n_updates = 0\n")
        assert (v.kind, v.expected) == ("type", "nonzero[usize]")


def test_aliyun_http_table_at_1_2_4_lists_each_missing_key() -> None:
    text = (
        '[analytic.storage.object_store]\ntype = "Aliyun"\nkey_id = "k"\nkey_secret = "s"\n'
        'endpoint = "e"\nbucket = "b"\nprefix = "p"\n[analytic.storage.object_store.http]\ntimeout = "5s"\n'
    )
    assert [(v.path, v.kind, v.expected) for v in db((1, 2, 4), text)] == [
        ("analytic.storage.object_store.http.pool_max_idle_per_host", "missing", "usize"),
        ("analytic.storage.object_store.http.keep_alive_timeout", "missing", "duration"),
        ("analytic.storage.object_store.http.keep_alive_interval", "missing", "duration"),
    ]
    # At 1.2.2 those settings sit on the Aliyun table itself; a `http` table is ignored.
    assert brief(db((1, 2, 2), text)) == [("analytic.storage.object_store.http", "unknown")]
    assert db((1, 2, 2), text.replace("[analytic.storage.object_store.http]\n", "")) == []


@pytest.mark.parametrize("version", ALL)
def test_aliyun_needs_its_five_keys(version: ss.Version) -> None:
    found = db(version, '[analytic.storage.object_store]\ntype = "Aliyun"\nbucket = "b"\n')
    assert brief(found) == [
        (f"analytic.storage.object_store.{k}", "missing")
        for k in ("key_id", "key_secret", "endpoint", "prefix")
    ]


@pytest.mark.parametrize("version", ALL)
def test_s3_and_obkv_object_stores_exist_from_1_2_4(version: ss.Version) -> None:
    s3 = (
        '[analytic.storage.object_store]\ntype = "S3"\nregion = "r"\nkey_id = "k"\nkey_secret = "s"\n'
        'endpoint = "e"\nbucket = "b"\nprefix = "p"\n[analytic.storage.object_store.retry]\nmax_retries = 3\n'
        'retry_timeout = "3m"\n'
    )
    obkv = '[analytic.storage.object_store]\ntype = "Obkv"\nprefix = "p"\n'
    if version < (1, 2, 4):
        (v,) = db(version, s3)
        assert (v.path, v.kind, v.expected) == (
            "analytic.storage.object_store.type",
            "type",
            "enum[Local|Aliyun]",
        )
        assert '"Local", "Aliyun"' in v.message
        assert brief(db(version, obkv)) == [("analytic.storage.object_store.type", "type")]
    else:
        assert db(version, s3) == []
        # ObkvOptions.client (an ObkvConfig) has no default: the table must be present, even empty.
        assert [(v.path, v.kind, v.expected) for v in db(version, obkv)] == [
            ("analytic.storage.object_store.client", "missing", "table")
        ]
        assert db(version, obkv + "[analytic.storage.object_store.client]\n") == []


@pytest.mark.parametrize("version", ALL)
def test_route_cache_has_no_defaults(version: ss.Version) -> None:
    assert brief(db(version, "[server.route_cache]\nenable = true\n")) == [
        ("server.route_cache.ttl", "missing"),
        ("server.route_cache.tti", "missing"),
        ("server.route_cache.capacity", "missing"),
    ]


@pytest.mark.parametrize("version", ALL)
def test_sub_table_access_perm_gained_a_default_at_1_2_7(version: ss.Version) -> None:
    found = db(version, "[server.sub_table_access_perm]\nenable_http = true\n")
    if version < (1, 2, 6):
        assert brief(found) == [("server.sub_table_access_perm", "unknown")]
    elif version == (1, 2, 6):
        assert brief(found) == [("server.sub_table_access_perm.enable_others", "missing")]
    else:
        assert found == []


def test_tracing_console_needs_a_port() -> None:
    assert brief(db((1, 2, 2), "[tracing.console]\n")) == [("tracing.console.port", "missing")]


# --- tagged enums ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL)
def test_wal_local_exists_only_from_2_1_0(version: ss.Version) -> None:
    (v,) = db(version, '[analytic.wal]\ntype = "Local"\n')
    assert (v.path, v.kind, v.expected) == ("analytic.wal.type", "type", "enum[RocksDB|Obkv|Kafka]")
    assert '"RocksDB", "Obkv", "Kafka"' in v.message


@pytest.mark.parametrize("version", ALL)
def test_a_present_enum_table_needs_its_tag(version: ss.Version) -> None:
    (v,) = db(version, '[analytic.wal]\ndata_dir = "/x"\n')
    assert (v.path, v.kind) == ("analytic.wal.type", "type")
    assert "missing" in v.message
    (v,) = db(version, "[cluster_deployment.meta_client]\nlease = '10s'\n")
    assert (v.path, v.kind, v.expected) == ("cluster_deployment.mode", "type", "enum[NoMeta|WithMeta]")


def test_wrong_tag_value_lists_the_accepted_values() -> None:
    (v,) = db((1, 2, 7), '[cluster_deployment]\nmode = "withmeta"\n')
    assert (v.path, v.kind, v.expected) == ("cluster_deployment.mode", "type", "enum[NoMeta|WithMeta]")
    assert '"NoMeta", "WithMeta"' in v.message and "withmeta" in v.message
    (v,) = db((1, 2, 7), "[cluster_deployment]\nmode = 1\n")
    assert v.kind == "type"


@pytest.mark.parametrize("version", ALL)
def test_kafka_broker_key_per_version(version: ss.Version) -> None:
    old = '[analytic.wal]\ntype = "Kafka"\n[analytic.wal.kafka.client]\nboost_broker = "k:9092"\n'
    new = '[analytic.wal]\ntype = "Kafka"\n[analytic.wal.kafka.client]\nboost_brokers = ["k:9092"]\n'
    if version < (1, 2, 4):
        assert db(version, old) == []
        assert brief(db(version, new)) == [("analytic.wal.kafka.client.boost_brokers", "unknown")]
    else:  # HDB 986732db (#980)
        assert db(version, new) == []
        assert brief(db(version, old)) == [("analytic.wal.kafka.client.boost_broker", "unknown")]
        (v,) = db(version, new.replace('["k:9092"]', '"k:9092"'))
        assert (v.kind, v.expected) == ("type", "list[str]")


@pytest.mark.parametrize("version", ALL)
def test_obkv_wal_with_all_its_tables(version: ss.Version) -> None:
    text = (
        '[analytic.wal]\ntype = "Obkv"\n[analytic.wal.obkv]\nfull_user_name = "u"\nparam_url = "p"\n'
        'password = "x"\n[analytic.wal.obkv.client]\nsys_user_name = "s"\nsys_password = "x"\n'
        'log_level_flag = "warn"\nrpc_connect_timeout = "3s"\n[analytic.wal.data_namespace]\nttl = "1d"\n'
        "shard_num = 8\n[analytic.wal.meta_namespace]\nclean_scan_batch_size = 100\n"
    )
    assert db(version, text) == []
    (v,) = db(version, text.replace('"warn"', '"WARN"'))
    assert v.path == "analytic.wal.obkv.client.log_level_flag"
    # the manifest namespace has no ttl
    assert brief(db(version, text + 'ttl = "1d"\n')) == [("analytic.wal.meta_namespace.ttl", "unknown")]


@pytest.mark.parametrize("version", ALL)
def test_static_route_no_meta(version: ss.Version) -> None:
    text = (
        '[cluster_deployment]\nmode = "NoMeta"\n[[cluster_deployment.rules.prefix_rules]]\nschema = "public"\n'
        'prefix = "t"\nshard = 0\n[[cluster_deployment.topology.schema_shards]]\nschema = "public"\n'
        "[[cluster_deployment.topology.schema_shards.shard_views]]\nshard_id = 0\n"
        '[cluster_deployment.topology.schema_shards.shard_views.endpoint]\naddr = "127.0.0.1"\nport = 8831\n'
    )
    assert db(version, text) == []
    broken = text.replace("port = 8831\n", "").replace("shard = 0\n", "shard = -1\n")
    assert brief(db(version, broken)) == [
        ("cluster_deployment.rules.prefix_rules[0].shard", "type"),
        ("cluster_deployment.topology.schema_shards[0].shard_views[0].endpoint.port", "missing"),
    ]
    endpoint_string = text.replace(
        '[cluster_deployment.topology.schema_shards.shard_views.endpoint]\naddr = "127.0.0.1"\nport = 8831\n',
        'endpoint = "127.0.0.1:8831"\n',
    )
    (v,) = db(version, endpoint_string)
    assert (v.path, v.kind, v.expected) == (
        "cluster_deployment.topology.schema_shards[0].shard_views[0].endpoint",
        "type",
        "table",
    )


@pytest.mark.parametrize("version", ALL)
def test_externally_tagged_table_options(version: ss.Version) -> None:
    full = (
        '{SizeTiered = {bucket_low = 0.5, bucket_high = 1.5, min_sstable_size = "50MB", min_threshold = 4, '
        'max_threshold = 16, max_input_sstable_size = "1200MB"}}'
    )
    assert db(version, '[analytic.table_opts]\ncompaction_strategy = "Default"') == []
    assert db(version, f"[analytic.table_opts]\ncompaction_strategy = {full}") == []
    window = full.replace(
        "{SizeTiered = ", '{TimeWindow = {timestamp_resolution = "milliseconds", size_tiered = '
    )
    assert db(version, f"[analytic.table_opts]\ncompaction_strategy = {window}}}") == []
    (v,) = db(version, '[analytic.table_opts]\ncompaction_strategy = "SizeTiered"')
    assert v.kind == "type" and "{SizeTiered = ...}" in v.message
    assert brief(
        db(version, "[analytic.table_opts]\ncompaction_strategy = {SizeTiered = {bucket_low = 0.5}}")
    ) == [
        (f"analytic.table_opts.compaction_strategy.SizeTiered.{k}", "missing")
        for k in (
            "bucket_high",
            "min_sstable_size",
            "min_threshold",
            "max_threshold",
            "max_input_sstable_size",
        )
    ]
    hybrid = db(version, '[analytic.table_opts]\nstorage_format_hint = {Specific = "Hybrid"}')
    assert brief(hybrid) == (
        [] if version < (1, 2, 6) else [("analytic.table_opts.storage_format_hint.Specific", "type")]
    )  # 06e985f9 (#1172)
    assert db(version, '[analytic.table_opts]\nstorage_format_hint = "Auto"\nupdate_mode = "Append"') == []
    assert brief(db(version, '[analytic.table_opts]\nupdate_mode = "append"')) == [
        ("analytic.table_opts.update_mode", "type")
    ]


@pytest.mark.parametrize("version", ALL)
def test_memtable_type(version: ss.Version) -> None:
    found = brief(db(version, '[analytic.table_opts]\nmemtable_type = "Columnar"'))
    if version < (1, 2, 6):
        assert found == [("analytic.table_opts.memtable_type", "unknown")]
    elif version < (2, 0, 0):
        assert found == []
    else:  # 53df95ac (#1271): Columnar renamed Column
        assert found == [("analytic.table_opts.memtable_type", "type")]
        assert db(version, '[analytic.table_opts]\nmemtable_type = "Column"') == []


@pytest.mark.parametrize("version", ALL)
def test_limiter_rules_per_version(version: ss.Version) -> None:
    plain = '[limiter]\nrules = ["AnyQuery", "QueryWithoutPredicate"]\n'
    tagged = '[limiter]\nrules = [{type = "AnyQuery"}, {type = "QueryWithoutPredicate"}]\n'
    if version < (2, 0, 0):
        assert db(version, plain) == []
        assert brief(db(version, tagged)) == [("limiter.rules[0]", "type"), ("limiter.rules[1]", "type")]
    else:  # 904e2d5e (#1420): #[serde(tag = "type", content = "content")]
        assert db(version, tagged) == []
        assert brief(db(version, plain)) == [("limiter.rules[0]", "type"), ("limiter.rules[1]", "type")]
        # QueryRange's content is read as a borrowed &str, which toml 0.7 never provides.
        (v,) = db(version, '[limiter]\nrules = [{type = "QueryRange", content = "1h"}]')
        assert (v.path, v.kind, v.expected) == (
            "limiter.rules[0].type",
            "type",
            "enum[QueryWithoutPredicate|AnyQuery|AnyInsert]",
        )


@pytest.mark.parametrize("version", ALL)
def test_hotspot_per_version(version: ss.Version) -> None:
    old = "[server.hotspot]\nauto_dump_interval = true\nauto_dump_len = 10\ndump_interval = {secs = 5, nanos = 0}\n"
    new = '[server.hotspot]\nauto_dump_interval = "1m"\nenable_auto_dump = true\nauto_dump_num_items = 10\n'
    if version < (1, 2, 6):  # dump_interval is a std::time::Duration
        assert db(version, old) == []
        assert brief(db(version, "[server.hotspot]\ndump_interval = {secs = 5}\n")) == [
            ("server.hotspot.dump_interval.nanos", "missing")
        ]
    else:  # cfe178a8 (#1127)
        assert db(version, new) == []
        assert ("server.hotspot.auto_dump_interval", "type") in brief(db(version, old))


# --- unknown keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL)
def test_unknown_keys(version: ss.Version) -> None:
    text = (
        '[cluster]\nx = 1\n[server]\ndeploy_mode = "Cluster"\n[runtime]\nbackground_thread_num = 4\n'
        "[analytic.compaction_config]\nmax_ongoing_tasks = 4\n"
    )
    found = db(version, text)
    assert brief(found) == [
        ("cluster", "unknown"),
        ("server.deploy_mode", "unknown"),
        ("runtime.background_thread_num", "unknown"),
        ("analytic.compaction_config", "unknown"),
    ]
    assert "deny_unknown_fields" in found[0].message and "101" in found[0].message
    assert all(v.message == "unknown key (the server ignores it)" for v in found[1:])
    assert all(v.expected is None for v in found)


def test_meta_unknown_keys_are_ignored_even_at_top_level() -> None:
    (v,) = meta((1, 2, 2), 'nodename = "m"\n')
    assert (v.path, v.kind, v.message) == ("nodename", "unknown", "unknown key (the server ignores it)")


# --- version differences ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL)
def test_meta_http_port_key(version: ss.Version) -> None:
    old, new = meta(version, "default-http-port = 8080\n"), meta(version, "http-port = 8080\n")
    if version < (1, 2, 7):
        assert (old, brief(new)) == ([], [("http-port", "unknown")])
    else:  # META bdd40e6 (#238)
        assert (brief(old), new) == ([("default-http-port", "unknown")], [])
    (v,) = meta(version, '[flow-limiter]\nlimit = "10"\n')
    assert (v.path, v.kind, v.expected) == ("flow-limiter.limit", "type", "i64")


@pytest.mark.parametrize(
    ("key", "first", "last"),
    [
        ("procedure-executing-batch-size", (1, 2, 4), (2, 0, 0)),
        ("enable-embed-etcd", (1, 2, 7), (2, 0, 0)),
        ("grpc-port", (1, 2, 7), (2, 0, 0)),
        ("addr", (1, 2, 7), (2, 0, 0)),
        ("grpc-service-max-send-msg-size", (1, 2, 7), (2, 0, 0)),
        ("etcd-ca-cert-path", (2, 0, 0), (2, 0, 0)),
        ("max-ops-per-txn", (2, 0, 0), (2, 0, 0)),
        ("default-cluster-replication-factor", (1, 2, 2), (1, 2, 7)),
        ("etcd-max-txn-ops", (1, 2, 2), (2, 0, 0)),
    ],
)
def test_meta_keys_exist_in_their_versions(key: str, first: ss.Version, last: ss.Version) -> None:
    for version in DB_VERSIONS:
        assert (key in ss.meta_schema(version)) == (first <= version <= last), (key, version)


@pytest.mark.parametrize(
    ("path", "first"),
    [
        ("server.postgresql_port", (1, 2, 6)),
        ("server.remote_client", (1, 2, 4)),
        ("server.remote_client.compression", (1, 2, 4)),
        ("server.query_dedup", (1, 2, 7)),
        ("server.sub_table_access_perm", (1, 2, 6)),
        ("runtime.read_thread_stack_size", (2, 0, 0)),
        ("runtime.low_read_thread_num", (2, 0, 0)),
        ("logger.slow_query_path", (1, 2, 7)),
        ("query_engine.expensive_query_threshold", (2, 0, 0)),
        ("analytic.recover_mode", (1, 2, 4)),
        ("analytic.num_streams_to_prefetch", (1, 2, 5)),
        ("analytic.metrics", (1, 2, 7)),
        ("analytic.mutable_segment_switch_threshold", (2, 0, 0)),
        ("analytic.enable_primary_key_sampling", (2, 0, 0)),
        ("analytic.min_flush_interval", (2, 0, 0)),
        ("analytic.mem_usage_sampling_interval", (2, 0, 0)),
        ("analytic.wal_encode", (2, 0, 0)),
        ("analytic.wal:RocksDB.disable_data", (2, 0, 0)),
        ("analytic.wal:Kafka.disable_data", (2, 0, 0)),
        ("analytic.wal:RocksDB.data_namespace.write_buffer_size", (1, 2, 5)),
        ("analytic.wal:Obkv.data_namespace.bucket_create_parallelism", (1, 2, 6)),
        ("analytic.wal:Kafka.kafka.max_retry", (1, 2, 4)),
        ("analytic.storage.disk_cache_partition_bits", (1, 2, 4)),
        ("analytic.storage.object_store:Aliyun.http", (1, 2, 4)),
        ("analytic.table_opts.layered_memtable_opts", (2, 0, 0)),
        ("analytic.remote_engine_client.max_retry", (2, 0, 0)),
        ("cluster_deployment:WithMeta.etcd_client.tls", (2, 0, 0)),
        ("cluster_deployment:WithMeta.etcd_client.enable_shard_lock_fast_reacquire", (2, 0, 0)),
    ],
)
def test_db_keys_appear_in_their_version(path: str, first: ss.Version) -> None:
    for version in DB_VERSIONS:
        assert has(ss.db_schema(version), path) == (version >= first), (path, version)


@pytest.mark.parametrize(
    ("path", "first", "last"),
    [
        ("analytic.storage.object_store:Aliyun.timeout", (1, 2, 2), (1, 2, 2)),
        ("analytic.wal:Kafka.kafka.client.boost_broker", (1, 2, 2), (1, 2, 2)),
        ("server.hotspot.dump_interval", (1, 2, 2), (1, 2, 5)),
        ("server.enable_query_dedup", (1, 2, 5), (1, 2, 6)),
    ],
)
def test_db_keys_disappear_after_their_version(path: str, first: ss.Version, last: ss.Version) -> None:
    for version in DB_VERSIONS:
        assert has(ss.db_schema(version), path) == (first <= version <= last), (path, version)


def test_horaedb_2_0_0_section_7_fields_are_accepted() -> None:
    text = (
        "[server]\npostgresql_port = 5433\n[server.query_dedup]\nenable = true\n"
        "[server.sub_table_access_perm]\nenable_http = false\n[server.remote_client]\nmax_retry = 3\n"
        '[runtime]\nread_thread_stack_size = "16MB"\nlow_read_thread_num = 1\n'
        '[analytic]\nmutable_segment_switch_threshold = "3MB"\nenable_primary_key_sampling = true\n'
        'num_streams_to_prefetch = 2\nmin_flush_interval = "1m"\nmem_usage_sampling_interval = "0s"\n'
        'recover_mode = "ShardBased"\n[analytic.metrics]\nenable_table_level_metrics = true\n'
        '[analytic.wal_encode]\nnum_bytes_compress_threshold = "1KB"\nformat = "Columnar"\n'
        '[analytic.wal]\ntype = "RocksDB"\ndisable_data = false\n'
        '[cluster_deployment]\nmode = "WithMeta"\n[cluster_deployment.etcd_client]\n'
        "enable_shard_lock_fast_reacquire = true\n[cluster_deployment.etcd_client.tls]\nenable = true\n"
        'domain = "etcd"\nca_cert_path = "/ca"\n'
    )
    assert db((2, 0, 0), text) == []
    # wal_encode (WalEncodeConfig) has no serde default.
    assert brief(db((2, 0, 0), "[analytic.wal_encode]\n")) == [
        ("analytic.wal_encode.num_bytes_compress_threshold", "missing"),
        ("analytic.wal_encode.format", "missing"),
    ]


# --- the checker itself ---------------------------------------------------------------------------


def test_order_is_document_order_then_schema_order_for_missing() -> None:
    text = (
        '[analytic.manifest]\nscan_timeout = 5\nzzz = 1\n[analytic.table_opts]\nwrite_buffer_size = "x"\n'
        "[node]\naaa = 1\n"
    )
    assert brief(db((1, 2, 2), text)) == [
        ("analytic.manifest.scan_timeout", "type"),
        ("analytic.manifest.zzz", "unknown"),
        ("analytic.manifest.snapshot_every_n_updates", "missing"),
        ("analytic.manifest.scan_batch_size", "missing"),
        ("analytic.manifest.store_timeout", "missing"),
        ("analytic.table_opts.write_buffer_size", "type"),
        ("node.aaa", "unknown"),
    ]
    assert db((1, 2, 2), text) == db((1, 2, 2), text)


def test_a_required_tagged_enum_is_reported_missing() -> None:
    schema: ss.Table = {"t": ss.Tagged("kind", {"A": {"x": "u8!"}}, required=True), "u": "str!"}
    assert [(v.path, v.kind, v.expected) for v in ss.check({}, schema)] == [
        ("t", "missing", "table with kind = enum[A]"),
        ("u", "missing", "str"),
    ]
    assert brief(ss.check({"t": {"kind": "A"}, "u": "s"}, schema)) == [("t.x", "missing")]


class _Weird:
    pass


HOSTILE: list[Any] = [
    None,
    [],
    "text",
    42,
    {1: 2, None: 3, ("a",): 4},
    {"analytic": None},
    {"analytic": []},
    {"analytic": {"wal": "RocksDB"}},
    {"analytic": {"wal": {"type": None}}},
    {"analytic": {"wal": {"type": ["RocksDB"]}}},
    {"analytic": {"wal": {"type": {"x": 1}}}},
    {"analytic": {"table_opts": {"compaction_strategy": {"SizeTiered": "x"}, "write_buffer_size": 10**30}}},
    {"analytic": {"table_opts": {"compaction_strategy": {"A": 1, "B": 2}, "segment_duration": "\u00e9s"}}},
    {"analytic": {"storage": {"mem_cache_capacity": "\u0660MB", "object_store": {"type": "S3"}}}},
    {"server": {"timeout": "nan s", "http_max_body_size": float("inf"), "forward": [{"x": 1}]}},
    {"server": {"timeout": "infs", "hotspot": {"dump_interval": [5, 0]}}},
    {"limiter": {"rules": [None, {"type": 1}, [], "AnyQuery"]}},
    {"limiter": {"rules": {"a": 1}}},
    {
        "cluster_deployment": {
            "mode": "NoMeta",
            "topology": {"schema_shards": [1, None, {"shard_views": [{}]}]},
        }
    },
    {"node": {"addr": _Weird()}, "runtime": b"bytes", "tracing": {"console": {"port": math.nan}}},
]


@pytest.mark.parametrize("document", HOSTILE)
@pytest.mark.parametrize("version", [(1, 2, 2), (1, 2, 7), (2, 0, 0)])
def test_check_never_raises(document: Any, version: ss.Version) -> None:
    for schema in (ss.db_schema(version), ss.meta_schema(version), ss.NAMED["BlockRule"]):
        found = ss.check(document, schema)  # type: ignore[arg-type]
        assert all(isinstance(v, ss.Violation) and v.kind in {"unknown", "type", "missing"} for v in found)


def test_self_referencing_document_does_not_loop() -> None:
    doc: dict[str, Any] = {}
    doc["analytic"] = doc
    doc["server"] = {"forward": doc}
    found = ss.check(doc, ss.db_schema((1, 2, 2)))
    assert ("analytic.analytic", "unknown") in brief(found)
