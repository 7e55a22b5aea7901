"""Each rule of the desired-state file beyond types (desired/rules.py), one row per rule: the exact
problems (key path and words) and warnings it yields, and the value just inside the limit that
yields none. Pure: rules.check on the file's model."""

from __future__ import annotations

import tomllib

import pytest

from ceres_supervisor.desired import rules
from ceres_supervisor.model.spec import DesiredState

from .conftest import BASE

V127 = BASE.replace("[cluster]\n", '[cluster]\nversion = "1.2.7"\n').replace(
    "mysql_port = 3308", "mysql_port = 3308\npostgresql_port = 5434"
)
MOUNT = "must lie under /home/admin/data/ceresdb, where the node's data directory is mounted; anything else is lost when the container is recreated"
SHARE = ("meta nodes meta0, meta1 share a machine: CeresMeta forwards API calls to the leader's host with the "
         "follower's own HTTP port, which cannot work here (the supervisor sends those routes to the leader only)")  # fmt: skip


# One CeresDB node: it holds every shard of the cluster.
ONE_DB = BASE.split('[[ceresdb.nodes]]\nname = "db1"')[0]
KAFKA = '\n[ceresdb.wal]\ntype = "Kafka"\n[ceresdb.wal.kafka.client]\n'
IGNORED = "not a key of the CeresDB 1.2.2 config; the server ignores it silently"


def supervisor(extra: str) -> str:
    return BASE.replace("[cluster]\n", "[supervisor]\n" + extra + "\n[cluster]\n", 1)


def ceresdb(extra: str) -> str:
    return BASE.replace("[[meta.nodes]]", extra + "\n[[meta.nodes]]", 1)


def grace(seconds: str, full: str, shards: int = 4) -> tuple[str, str]:
    return ("supervisor.lease_grace", f"{seconds}s is shorter than CeresMeta ceresdb 1.2.2 takes to reopen one "
            f"node's {shards} shards ({full}s at its pace); consider at least {full}s")  # fmt: skip


def db0_config(table: str) -> str:
    """BASE with a `config` table on db0 alone (db1 has none)."""
    return BASE.replace(
        'name = "db0"\nhost = "127.0.0.1"', f'name = "db0"\nhost = "127.0.0.1"\nconfig = {table}'
    )


CASES = [
    ("a non-loopback listener without a token", supervisor('listen = "0.0.0.0:5480"'),
     [("supervisor.token_file", "required when supervisor.listen is TCP on a non-loopback address")], []),
    ("a relative token file", supervisor('token_file = "t"'), [("supervisor.token_file", "must be an absolute path")], []),
    ("a probe timeout as long as the interval", supervisor('probe_interval = "5s"\nprobe_timeout = "5s"'),
     [("supervisor.probe_timeout", "must be shorter than probe_interval")], []),
    ("a probe timeout just shorter", supervisor('probe_interval = "5s"\nprobe_timeout = "4s"'), [], []),
    ("an initial backoff equal to the maximum", supervisor('backoff_initial = "60s"\nbackoff_max = "60s"'), [], []),
    ("an initial backoff above the maximum", supervisor('backoff_initial = "61s"\nbackoff_max = "60s"'),
     [("supervisor.backoff_initial", "must not exceed backoff_max")], []),
    ("a duplicate name across roles", BASE.replace('name = "db1"', 'name = "meta0"'),
     [("ceresdb.nodes[1].name", "duplicate node name 'meta0' (also meta.nodes[0])")], []),
    ("a port twice on the loopback", BASE.replace("grpc_port = 8832", "grpc_port = 8831"),
     [("ceresdb.nodes[1].grpc_port", "port 8831 is already used by ceresdb.nodes[0].grpc_port on this machine's loopback")], []),
    ("a port twice on one host",
     BASE.replace('host = "127.0.0.1"\ngrpc_port = 8832', 'host = "10.0.0.5"\ngrpc_port = 8831').replace(
         'name = "db0"\nhost = "127.0.0.1"', 'name = "db0"\nhost = "10.0.0.5"'),
     [("ceresdb.nodes[1].grpc_port", "port 8831 is already used by ceresdb.nodes[0].grpc_port on 10.0.0.5")], []),
    ("a port once per host", BASE.replace('host = "127.0.0.1"\ngrpc_port = 8832', 'host = "10.0.0.6"\ngrpc_port = 8831'), [], []),
    ("two meta members on one machine",
     BASE.replace('[[ceresdb.nodes]]\nname = "db0"', '[[meta.nodes]]\nname = "meta1"\nhost = "127.0.0.1"\nclient_port = 12379\n'
                  'peer_port = 12380\nhttp_port = 8081\n\n[[ceresdb.nodes]]\nname = "db0"', 1),
     [("meta.nodes", "2 meta nodes: etcd needs an odd number (1, 3, 5)")], [("meta.nodes", SHARE)]),
    ("three meta members on three machines",
     BASE.replace('[[ceresdb.nodes]]\nname = "db0"', '[[meta.nodes]]\nname = "meta1"\nhost = "10.0.0.2"\n\n[[meta.nodes]]\n'
                  'name = "meta2"\nhost = "10.0.0.3"\n\n[[ceresdb.nodes]]\nname = "db0"', 1), [], []),
    ("a lease of 15s", ceresdb('[ceresdb]\nlease = "15s"'),
     [("ceresdb.lease", "must be under 15s: CeresMeta expires a node 10s after its last heartbeat and heartbeats "
       "go every 2/3 of the lease")], [grace("60", "75")]),
    ("a lease of 14s", ceresdb('[ceresdb]\nlease = "14s"'), [], [grace("60", "71.6667")]),
    ("a shard lock TTL of 14", ceresdb("[ceresdb]\nshard_lock_ttl = 14"),
     [("ceresdb.shard_lock_ttl", "must be at least 15 (CeresDB refuses less)")], []),
    ("a shard lock TTL of 15, the least CeresDB takes", ceresdb("[ceresdb]\nshard_lock_ttl = 15"), [], []),
    ("a meta address without a scheme", ceresdb('[ceresdb]\nmeta_addr = "127.0.0.1:2379"'),
     [("ceresdb.meta_addr", "must be http://<host>:<port> (meta's client port)")], []),
    ("a meta address", ceresdb('[ceresdb]\nmeta_addr = "http://127.0.0.1:2379"'), [], []),
    ("a PostgreSQL port on 1.2.2", BASE.replace("mysql_port = 3308", "mysql_port = 3308\npostgresql_port = 5433"),
     [("ceresdb.nodes[1].postgresql_port", "exists from 1.2.6; this cluster is ceresdb 1.2.2")], []),
    ("an OBKV WAL without its table", BASE + '\n[ceresdb.wal]\ntype = "Obkv"\n',
     [("ceresdb.wal.obkv", 'required for type = "Obkv"')], []),
    ("a data directory for a Kafka WAL",
     BASE + '\n[ceresdb.wal]\ntype = "Kafka"\ndata_dir = "/home/admin/data/ceresdb/wal"\n[ceresdb.wal.kafka.client]\nboost_broker = "k:9092"\n',
     [("ceresdb.wal.data_dir", 'only for type = "RocksDB"')], []),
    ("a WAL outside the data mount", BASE + '\n[ceresdb.wal]\ndata_dir = "/tmp/wal"\n', [("ceresdb.wal.data_dir", MOUNT)], []),
    ("a WAL at the data mount itself", BASE + '\n[ceresdb.wal]\ndata_dir = "/home/admin/data/ceresdb/"\n', [], []),
    ("a WAL at the data mount, no trailing slash", BASE + '\n[ceresdb.wal]\ndata_dir = "/home/admin/data/ceresdb"\n', [], []),
    # A directory beside the mount whose name only begins with the mount's is outside it.
    ("a WAL in the mount's name and a space", BASE + '\n[ceresdb.wal]\ndata_dir = "/home/admin/data/ceresdb "\n',
     [("ceresdb.wal.data_dir", MOUNT)], []),
    ("a WAL in the mount's name and an X", BASE + '\n[ceresdb.wal]\ndata_dir = "/home/admin/data/ceresdbX/"\n',
     [("ceresdb.wal.data_dir", MOUNT)], []),
    ("an OBKV table for a RocksDB WAL",
     BASE + '\n[ceresdb.wal.obkv]\nfull_user_name = "u"\nparam_url = "p"\npassword = "x"\n'
     '[ceresdb.wal.obkv.client]\nsys_user_name = "s"\nsys_password = "p"\n',
     [("ceresdb.wal.obkv", 'only for type = "Obkv"')], []),
    ("a Kafka table for a RocksDB WAL", BASE + '\n[ceresdb.wal.kafka.client]\nboost_broker = "k:9092"\n',
     [("ceresdb.wal.kafka", 'only for type = "Kafka"')], []),
    ("a Kafka WAL without brokers", BASE + '\n[ceresdb.wal]\ntype = "Kafka"\n[ceresdb.wal.kafka.client]\n',
     [("ceresdb.wal.kafka.client.boost_broker", "required for a Kafka WAL")], []),
    ("remote keys for a local store", BASE + '\n[ceresdb.object_store]\ntype = "Local"\nkey_id = "k"\nregion = "r"\n',
     [("ceresdb.object_store.key_id", 'not used by type = "Local"'), ("ceresdb.object_store.region", 'not used by type = "Local"')], []),
    ("a local store outside the data mount", BASE + '\n[ceresdb.object_store]\ntype = "Local"\ndata_dir = "/srv/x"\n',
     [("ceresdb.object_store.data_dir", MOUNT)], []),
    ("an Aliyun store in part",
     BASE + '\n[ceresdb.object_store]\ntype = "Aliyun"\nkey_id = "k"\nregion = "r"\ndata_dir = "/home/admin/data/ceresdb/x"\n',
     [("ceresdb.object_store.data_dir", 'only for type = "Local"'),
      *((f"ceresdb.object_store.{k}", 'required for type = "Aliyun"') for k in ("key_secret", "endpoint", "bucket", "prefix")),
      ("ceresdb.object_store.region", 'only for type = "S3"')], []),
    ("an HTTP table on 1.2.2",
     BASE + '\n[ceresdb.object_store]\ntype = "Aliyun"\nkey_id = "k"\nkey_secret = "s"\nendpoint = "e"\nbucket = "b"\n'
     'prefix = "p"\n[ceresdb.object_store.http]\ntimeout = "1s"\n',
     [("ceresdb.object_store.http", "exists from 1.2.4; this cluster is ceresdb 1.2.2")], []),
    ("S3 without a region",
     V127 + '\n[ceresdb.object_store]\ntype = "S3"\nkey_id = "k"\nkey_secret = "s"\nendpoint = "e"\nbucket = "b"\nprefix = "p"\n',
     [("ceresdb.object_store.region", 'required for type = "S3"')], []),
    ("a meta key the supervisor sets", BASE + '\n[meta.config]\nnode-name = "x"\n',
     [("meta.config.node-name", "is set by the supervisor from meta.nodes[].name")], []),
    ("a CeresDB key the supervisor sets", BASE + "\n[ceresdb.config.server]\ngrpc_port = 1\n",
     [("ceresdb.config.server.grpc_port", "is set by the supervisor from ceresdb.nodes[].grpc_port")], []),
    # CeresDB's serde matches keys exactly (CeresMeta's go-toml does not): GRPC_PORT is not grpc_port.
    ("a CeresDB key the supervisor sets, in capitals", BASE + "\n[ceresdb.config.server]\nGRPC_PORT = 1\n",
     [("ceresdb.config.server.GRPC_PORT", IGNORED)], []),
    ("a key the server removed", BASE + "\n[ceresdb.config.analytic]\nwrite_group_worker_num = 4\n",
     [("ceresdb.config.analytic.write_group_worker_num", "the server ignores it without a word (removed in 1.2.0)")], []),
    ("a list of brokers on 1.2.2", BASE + '\n[ceresdb.config.analytic.wal.kafka.client]\nboost_brokers = ["k"]\n',
     [("ceresdb.config.analytic.wal.kafka.client.boost_brokers", "ceresdb 1.2.2 reads boost_broker (one string)")], []),
    ("one broker on 1.2.7", V127 + '\n[ceresdb.config.analytic.wal.kafka.client]\nboost_broker = "k"\n',
     [("ceresdb.config.analytic.wal.kafka.client.boost_broker", "ceresdb 1.2.7 reads boost_brokers (a list)")], []),
    ("the one broker 1.2.2 reads, in a config table",
     BASE + KAFKA + 'boost_broker = "k:9092"\n\n[ceresdb.config.analytic.wal.kafka.client]\nboost_broker = "k2:9092"\n', [], []),
    ("the list of brokers 1.2.7 reads, in a config table",
     V127 + KAFKA + 'boost_brokers = ["k:9092"]\n\n[ceresdb.config.analytic.wal.kafka.client]\nboost_brokers = ["k2:9092"]\n',
     [], []),
    ("a section CeresDB does not have", BASE + "\n[ceresdb.config.nonsense]\nx = 1\n",
     [("ceresdb.config.nonsense", "not a section of the CeresDB config; the server would exit at start (sections: "
       "analytic, cluster_deployment, limiter, logger, node, query_engine, runtime, server, tracing)")], []),
    ("a dynamic topology on local storage", BASE + '\n[meta]\ntopology = "dynamic"\n', [],
     [("meta.topology", "dynamic topology moves shards between nodes; use it only with remote object storage")]),
    ("a short lease grace", supervisor('lease_grace = "5s"'), [], [grace("5", "58.3333")]),
    # A lease of 12s: heartbeats every 8s, (4 shards + 1) x (5s tick + 8s) = 65s exactly.
    ("a lease grace as long as the full reopen", ceresdb('[ceresdb]\nlease = "12s"\n\n[supervisor]\nlease_grace = "65s"'), [], []),
    ("a lease grace a second shorter", ceresdb('[ceresdb]\nlease = "12s"\n\n[supervisor]\nlease_grace = "64s"'), [],
     [grace("64", "65")]),
    ("one CeresDB node, which reopens all 8 shards", ONE_DB, [], [grace("60", "105", shards=8)]),
    # The servers' own schema: each problem named at the key of this file that causes it.
    ("an unknown key in the config every node shares, once", BASE + "\n[ceresdb.config.analytic]\nreplay_batch_sise = 10\n",
     [("ceresdb.config.analytic.replay_batch_sise", IGNORED)], []),
    ("an unknown key in the third node's own config",
     BASE + '\n[[ceresdb.nodes]]\nname = "db2"\nhost = "127.0.0.1"\ngrpc_port = 8833\nhttp_port = 5442\nmysql_port = 3309\n'
     "config = { runtime = { bogus = 1 } }\n", [("ceresdb.nodes[2].config.runtime.bogus", IGNORED)], []),
    ("an unknown key in a meta node's own config",
     BASE.replace('name = "meta0"\nhost = "127.0.0.1"', 'name = "meta0"\nhost = "127.0.0.1"\nconfig = { lease-secs = 1 }'),
     [("meta.nodes[0].config.lease-secs", "not a key of the CeresMeta 1.2.2 config; the server ignores it silently")], []),
    # Named as written, whatever it begins with (X, the letter some code strips along with dots).
    ("an unknown CeresMeta key that begins with X", BASE + "\n[meta.config]\nXylophone = 1\n",
     [("meta.config.Xylophone", "not a key of the CeresMeta 1.2.2 config; the server ignores it silently")], []),
    # db0's own table sets tracing.level: the key it does not set is still named in ceresdb.config.
    ("an unknown key beside a node's own table", db0_config("{ tracing = { level = \"info\" } }") + "\n[ceresdb.config.tracing]\nbogus = 1\n",
     [("ceresdb.config.tracing.bogus", IGNORED)], []),
    ("a table given in part beside a node's own", db0_config("{ tracing = { level = \"info\" } }") + "\n[ceresdb.config.tracing.console]\n",
     [("ceresdb.config.tracing.console.port", "required key is missing")], []),
    ("an unknown key in the RocksDB WAL's namespace", V127 + "\n[ceresdb.wal.data_namespace]\nbogus = 1\n",
     [("ceresdb.wal.data_namespace.bogus", "not a key of the CeresDB 1.2.7 config; the server ignores it silently")], []),
    ("an unknown release", BASE.replace("[cluster]\n", '[cluster]\nversion = "1.3.0"\n'),
     [("cluster.version", "1.3.0 is not a release this project knows (ceresdb: 1.2.2, 1.2.4, 1.2.5, 1.2.6, 1.2.7; horaedb: 2.0.0)")], []),
    ("another flavor's release", BASE.replace("[cluster]\n", '[cluster]\nversion = "2.0.0"\n'),
     [("cluster.version", '2.0.0 is a horaedb release: set cluster.flavor = "horaedb"')], []),
]  # fmt: skip


@pytest.mark.parametrize(("case", "text", "errors", "warnings"), CASES, ids=[c[0] for c in CASES])
def test_each_rule_says_exactly_what_is_wrong_and_where(
    case: str, text: str, errors: list[tuple[str, str]], warnings: list[tuple[str, str]]
) -> None:
    findings = rules.check(DesiredState.model_validate(tomllib.loads(text)))
    assert [(p.path, p.message) for p in findings.errors] == errors, case
    assert [(p.path, p.message) for p in findings.warnings] == warnings, case


@pytest.mark.parametrize(
    ("table", "key", "where"),
    [
        ("[ceresdb.config.server]", '"a.b" = 1', 'ceresdb.config.server."a.b"'),
        ("[ceresdb.config.analytic]", '"wal." = 1', 'ceresdb.config.analytic."wal."'),
        ("[ceresdb.config.analytic]", '"wal.data_dir" = "/x"', 'ceresdb.config.analytic."wal.data_dir"'),
    ],
)
def test_a_key_with_a_dot_in_its_name_is_one_key_of_the_file(table: str, key: str, where: str) -> None:
    """A quoted key such as "a.b" is one key: named once, where the file sets it (not once per
    node as a key the supervisor rendered, nor blamed on ceresdb.wal for a key that begins with
    "wal.")."""
    text = BASE + f"\n{table}\n{key}\n"
    findings = rules.check(DesiredState.model_validate(tomllib.loads(text)))
    assert [(p.path, p.message) for p in findings.errors] == [
        (where, "not a key of the CeresDB 1.2.2 config; the server ignores it silently")
    ]
