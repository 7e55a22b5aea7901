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


def supervisor(extra: str) -> str:
    return BASE.replace("[cluster]\n", "[supervisor]\n" + extra + "\n[cluster]\n", 1)


def ceresdb(extra: str) -> str:
    return BASE.replace("[[meta.nodes]]", extra + "\n[[meta.nodes]]", 1)


def grace(seconds: str, full: str) -> tuple[str, str]:
    return ("supervisor.lease_grace", f"{seconds}s is shorter than CeresMeta ceresdb 1.2.2 takes to reopen one "
            f"node's 4 shards ({full}s at its pace); consider at least {full}s")  # fmt: skip


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
    ("a key the server removed", BASE + "\n[ceresdb.config.analytic]\nwrite_group_worker_num = 4\n",
     [("ceresdb.config.analytic.write_group_worker_num", "the server ignores it without a word (removed in 1.2.0)")], []),
    ("a list of brokers on 1.2.2", BASE + '\n[ceresdb.config.analytic.wal.kafka.client]\nboost_brokers = ["k"]\n',
     [("ceresdb.config.analytic.wal.kafka.client.boost_brokers", "ceresdb 1.2.2 reads boost_broker (one string)")], []),
    ("one broker on 1.2.7", V127 + '\n[ceresdb.config.analytic.wal.kafka.client]\nboost_broker = "k"\n',
     [("ceresdb.config.analytic.wal.kafka.client.boost_broker", "ceresdb 1.2.7 reads boost_brokers (a list)")], []),
    ("a section CeresDB does not have", BASE + "\n[ceresdb.config.nonsense]\nx = 1\n",
     [("ceresdb.config.nonsense", "not a section of the CeresDB config; the server would exit at start (sections: "
       "analytic, cluster_deployment, limiter, logger, node, query_engine, runtime, server, tracing)")], []),
    ("a dynamic topology on local storage", BASE + '\n[meta]\ntopology = "dynamic"\n', [],
     [("meta.topology", "dynamic topology moves shards between nodes; use it only with remote object storage")]),
    ("a short lease grace", supervisor('lease_grace = "5s"'), [], [grace("5", "58.3333")]),
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
