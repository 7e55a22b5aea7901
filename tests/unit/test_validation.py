"""Invalid desired-state files: each rejected with exit 2, its key path, and no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ceres_supervisor.cli import commands
from ceres_supervisor.desired import loading, serverschema
from ceres_supervisor.model import versions

from .conftest import BASE

SECRET_VALUE = "s3cr3t-value-that-must-never-print"

# (case id, file text, expected key path or fragment in the message)
INVALID = [
    (
        "unknown key",
        BASE + '\n[supervisor]\nprobe_intervall = "5s"\n',
        "supervisor.probe_intervall: unknown key",
    ),
    (
        "agent_ttl too short",
        BASE + '\n[supervisor]\nagent_ttl = "1s"\n',
        "supervisor.agent_ttl: must be at least 3s",
    ),
    (
        "log size without unit",
        BASE + '\n[supervisor]\nlog_max_size = "20"\n',
        "supervisor.log_max_size: '20' is not a log size: a whole number and k, m or g",
    ),
    (
        "log size in bytes",
        BASE + '\n[supervisor]\nlog_max_size = "20MB"\n',
        "supervisor.log_max_size: '20MB' is not a log size",
    ),
    (
        "no log file kept",
        BASE + "\n[supervisor]\nlog_max_files = 0\n",
        "supervisor.log_max_files: Input should be greater than or equal to 1",
    ),
    (
        "unknown node key",
        BASE.replace('name = "db1"', 'name = "db1"\nport = 1'),
        "ceresdb.nodes[1].port: unknown key",
    ),
    (
        "duplicate node name",
        BASE.replace('name = "db1"', 'name = "db0"'),
        "ceresdb.nodes[1].name: duplicate node name",
    ),
    (
        "name shared across roles",
        BASE.replace('name = "db0"', 'name = "meta0"'),
        "ceresdb.nodes[0].name: duplicate",
    ),
    (
        "port shared on one host",
        BASE.replace("grpc_port = 8832", "grpc_port = 8831"),
        "ceresdb.nodes[1].grpc_port: port 8831 is already used by ceresdb.nodes[0].grpc_port",
    ),
    (
        "port shared across loopback addresses",
        BASE.replace(
            'host = "127.0.0.1"\ngrpc_port = 8832\nhttp_port = 5441\nmysql_port = 3308', 'host = "127.0.0.2"'
        ),
        "ceresdb.nodes[1].grpc_port: port 8831 is already used",
    ),
    (
        "meta port vs db port",
        BASE.replace("http_port = 5441", "http_port = 2379"),
        "ceresdb.nodes[1].http_port: port 2379 is already used by meta.nodes[0].client_port",
    ),
    (
        "even meta count",
        BASE.replace(
            '[[ceresdb.nodes]]\nname = "db0"',
            '[[meta.nodes]]\nname = "meta1"\nhost = "10.1.1.1"\n\n[[ceresdb.nodes]]\nname = "db0"',
            1,
        ),
        "meta.nodes: 2 meta nodes",
    ),
    ("lease 15s", BASE + '\n[ceresdb]\nlease = "15s"\n', "ceresdb.lease: must be under 15s"),
    (
        "shard_lock_ttl 10",
        BASE + "\n[ceresdb]\nshard_lock_ttl = 10\n",
        "ceresdb.shard_lock_ttl: must be at least 15",
    ),
    (
        "host with a port",
        BASE.replace('name = "db1"\nhost = "127.0.0.1"', 'name = "db1"\nhost = "127.0.0.1:8832"'),
        "ceresdb.nodes[1].host: '127.0.0.1:8832' contains a port",
    ),
    (
        "S3 on 1.2.2",
        BASE + '\n[ceresdb.object_store]\ntype = "S3"\nregion = "r"\nkey_id = "k"\nkey_secret = "s"\n'
        'endpoint = "e"\nbucket = "b"\nprefix = "p"\n',
        "ceresdb.object_store.type: S3 exists from 1.2.4",
    ),
    (
        "boost_brokers on 1.2.2",
        BASE + '\n[ceresdb.wal]\ntype = "Kafka"\n[ceresdb.wal.kafka.client]\nboost_brokers = ["k:9092"]\n',
        "ceresdb.wal.kafka.client.boost_brokers: ceresdb 1.2.2 reads boost_broker",
    ),
    (
        "boost_broker on 1.2.4",
        '[cluster]\nversion = "1.2.4"\n'
        + BASE.replace("[cluster]\n", "[x]\n", 1).replace("[x]\n", "")
        + '\n[ceresdb.wal]\ntype = "Kafka"\n[ceresdb.wal.kafka.client]\nboost_broker = "k"\n',
        "ceresdb.wal.kafka.client.boost_broker: ceresdb 1.2.4 reads boost_brokers",
    ),
    (
        "missing env secret",
        BASE + '\n[ceresdb.wal]\ntype = "Kafka"\n[ceresdb.wal.kafka.client]\n'
        'boost_broker = { env = "CERES_TEST_SURELY_UNSET" }\n',
        "ceresdb.wal.kafka.client.boost_broker: environment variable 'CERES_TEST_SURELY_UNSET' is not set",
    ),
    (
        "unreadable secret file",
        BASE + '\n[ceresdb.config.analytic.wal]\nobkv = { password = { file = "/nonexistent/pw" } }\n',
        "ceresdb.config.analytic.wal.obkv.password: cannot read secret file '/nonexistent/pw'",
    ),
    (
        "bad duration",
        BASE + '\n[supervisor]\nprobe_interval = "5 seconds"\n',
        "supervisor.probe_interval: '5 seconds' is not a duration",
    ),
    (
        "duration without unit",
        BASE + "\n[supervisor]\nprobe_interval = 5\n",
        "supervisor.probe_interval: must be a duration string",
    ),
    ("TOML syntax error", BASE + "\n[supervisor\nlisten = 1\n", "(at line 20, column 12)"),
    ("empty file", "", "the file is empty"),
    ("only comments", "# nothing here\n", "the file is empty"),
    (
        "wrong type",
        BASE.replace("mysql_port = 3308", 'mysql_port = "3308"'),
        "ceresdb.nodes[1].mysql_port: input should be a valid integer",
    ),
    (
        "port out of range",
        BASE.replace("mysql_port = 3308", "mysql_port = 70000"),
        "ceresdb.nodes[1].mysql_port",
    ),
    (
        "no ceresdb nodes",
        '[[meta.nodes]]\nname = "m"\nhost = "127.0.0.1"\n',
        "ceresdb: required key is missing",
    ),
    ("bad flavor", BASE.replace("[cluster]\n", '[cluster]\nflavor = "mysql"\n'), "cluster.flavor"),
    (
        "horaedb on 1.x",
        BASE.replace("[cluster]\n", '[cluster]\nflavor = "horaedb"\n'),
        'cluster.version: 1.2.2 is a ceresdb release: set cluster.flavor = "ceresdb"',
    ),
    (
        "ceresdb 2.0.0",
        BASE.replace("[cluster]\n", '[cluster]\nversion = "2.0.0"\n'),
        'cluster.version: 2.0.0 is a horaedb release: set cluster.flavor = "horaedb"',
    ),
    (
        "unknown version 1.3.0",
        BASE.replace("[cluster]\n", '[cluster]\nversion = "1.3.0"\n'),
        "cluster.version: 1.3.0 is not a release this project knows (ceresdb: 1.2.2, 1.2.4, 1.2.5, 1.2.6, 1.2.7; "
        "horaedb: 2.0.0)",
    ),
    (
        "unknown version 1.0.0",
        BASE.replace("[cluster]\n", '[cluster]\nversion = "1.0.0"\n'),
        "cluster.version: 1.0.0 is not a release this project knows",
    ),
    (
        "no tag 1.2.3",
        BASE.replace("[cluster]\n", '[cluster]\nversion = "1.2.3"\n'),
        "cluster.version: 1.2.3 is not a release this project knows",
    ),
    (
        "horaedb 2.1.0",
        BASE.replace("[cluster]\n", '[cluster]\nflavor = "horaedb"\nversion = "2.1.0"\n'),
        "cluster.version: 2.1.0 is not a release this project knows",
    ),
    # The servers' own schema of the version (serverschema, derived from the sources at each tag).
    (
        "u32 given as a size",
        BASE + '\n[ceresdb.config.analytic.table_opts]\nwrite_buffer_size = "32MB"\n',
        "ceresdb.config.analytic.table_opts.write_buffer_size: expected u32",
    ),
    (
        "unknown nested key",
        BASE + "\n[ceresdb.config.analytic]\nreplay_batch_sise = 10\n",
        "ceresdb.config.analytic.replay_batch_sise: not a key of the CeresDB 1.2.2 config; the server ignores it",
    ),
    (
        "node config wrong type",
        BASE.replace('name = "db1"', 'name = "db1"\nconfig = { runtime = { read_thread_num = "8" } }'),
        "ceresdb.nodes[1].config.runtime.read_thread_num: expected u",
    ),
    (
        "partial object_store.http on 1.2.4",
        '[cluster]\nversion = "1.2.4"\n'
        + BASE.replace("[cluster]\n", "", 1)
        + '\n[ceresdb.object_store]\ntype = "Aliyun"\nkey_id = "k"\nkey_secret = "s"\n'
        'endpoint = "e"\nbucket = "b"\nprefix = "p"\nhttp = { timeout = "5s" }\n',
        "ceresdb.object_store.http.pool_max_idle_per_host: required key is missing",
    ),
    (
        "a wrong duration in a table rendering fills",
        BASE + '\n[ceresdb.config.analytic.manifest]\nscan_timeout = "5 seconds"\n',
        "ceresdb.config.analytic.manifest.scan_timeout:",
    ),
    (
        "meta config wrong type",
        BASE + '\n[meta.config]\nlease-sec = "10"\n',
        "meta.config.lease-sec: expected",
    ),
    (
        "meta config unknown key",
        BASE + "\n[meta.config]\nleese-sec = 10\n",
        "meta.config.leese-sec: not a key of the CeresMeta 1.2.2 config",
    ),
    (
        "meta nested wrong type at 1.2.7",
        '[cluster]\nversion = "1.2.7"\n'
        + BASE.replace("[cluster]\n", "", 1).replace(
            "mysql_port = 3308", "mysql_port = 3308\npostgresql_port = 5434"
        )
        + '\n[meta.config]\nflow-limiter = { burst = "x" }\n',
        "meta.config.flow-limiter.burst: expected",
    ),
    (
        "non-loopback listen without token",
        BASE + '\n[supervisor]\nlisten = "0.0.0.0:5480"\n',
        "supervisor.token_file: required",
    ),
    (
        "bad listen",
        BASE + '\n[supervisor]\nlisten = "localhost"\n',
        "supervisor.listen: 'localhost' is neither host:port",
    ),
    (
        "owned key in config",
        BASE + "\n[meta.config]\ndefault-cluster-node-count = 5\n",
        "meta.config.default-cluster-node-count: is set by the supervisor",
    ),
    # go-toml v2 matches CeresMeta's keys case-insensitively: this one would move meta's root.
    (
        "owned meta key in capitals",
        BASE + '\n[meta.config]\nSTORAGE-ROOT-PATH = "/other"\n',
        "meta.config.STORAGE-ROOT-PATH: is set by the supervisor from cluster.flavor",
    ),
    (
        "fast re-acquire owned",
        '[cluster]\nflavor = "horaedb"\nversion = "2.0.0"\n'
        + BASE.replace("[cluster]\n", "", 1).replace(
            "mysql_port = 3308", "mysql_port = 3308\npostgresql_port = 5434"
        )
        + "\n[ceresdb.config.cluster_deployment.etcd_client]\nenable_shard_lock_fast_reacquire = true\n",
        "ceresdb.config.cluster_deployment.etcd_client.enable_shard_lock_fast_reacquire: is set by the supervisor",
    ),
    (
        "removed key in config",
        BASE + "\n[ceresdb.config.runtime]\nbackground_thread_num = 12\n",
        "ceresdb.config.runtime.background_thread_num: the server ignores it",
    ),
    (
        "unknown CeresDB section",
        BASE + "\n[ceresdb.config.cluster]\nx = 1\n",
        "ceresdb.config.cluster: not a section",
    ),
    (
        "data dir outside the mount",
        BASE + '\n[ceresdb.object_store]\ndata_dir = "/tmp/store"\n',
        "ceresdb.object_store.data_dir: must lie under /home/admin/data/ceresdb",
    ),
    ("bad node name", BASE.replace('name = "db1"', 'name = "db 1"'), "ceresdb.nodes[1].name"),
    (
        "postgresql_port before 1.2.6",
        BASE.replace("mysql_port = 3308", "mysql_port = 3308\npostgresql_port = 5434"),
        "ceresdb.nodes[1].postgresql_port: exists from 1.2.6",
    ),
    (
        "secret ref with both keys",
        BASE + '\n[ceresdb.object_store]\ntype = "Aliyun"\nkey_id = { env = "A", file = "/b" }\n',
        "ceresdb.object_store.key_id",
    ),
    (
        "Aliyun missing bucket",
        BASE + '\n[ceresdb.object_store]\ntype = "Aliyun"\nkey_id = "a"\nkey_secret = "b"\n'
        'endpoint = "e"\nprefix = "p"\n',
        'ceresdb.object_store.bucket: required for type = "Aliyun"',
    ),
    (
        "Kafka wal without kafka table",
        BASE + '\n[ceresdb.wal]\ntype = "Kafka"\n',
        "ceresdb.wal.kafka: required",
    ),
    # Keeping a 1.x cluster's roots and catalog: only where the real server can (HoraeDB from 2.0.0).
    (
        "keep_ceresdb_data on 1.x",
        BASE.replace("[cluster]\n", "[cluster]\nkeep_ceresdb_data = true\n"),
        "cluster.keep_ceresdb_data: only for HoraeDB from 2.0.0 (flavor horaedb)",
    ),
    (
        "root path in meta config",
        BASE + '\n[meta.config]\nstorage-root-path = "/ceresdb"\n',
        "meta.config.storage-root-path: is set by the supervisor from cluster.flavor and cluster.keep_ceresdb_data",
    ),
    (
        "root path in CeresDB config",
        BASE + '\n[ceresdb.config.cluster_deployment.etcd_client]\nroot_path = "/x"\n',
        "ceresdb.config.cluster_deployment.etcd_client.root_path: is set by the supervisor",
    ),
    ("pull of another kind", BASE + '\n[supervisor]\npull = "always"\n', "supervisor.pull"),
]


def test_lease_grace_shorter_than_a_full_reopen_is_a_warning(write, capsys) -> None:
    path = write(BASE + '\n[supervisor]\nlease_grace = "10s"\n')
    assert commands.main(["validate", "-c", str(path)]) == 0
    err = capsys.readouterr().err
    assert (
        "supervisor.lease_grace: 10s is shorter than CeresMeta ceresdb 1.2.2 takes to reopen one node's 4 shards"
        in err
    )


def test_the_known_versions_are_the_versions_of_the_schema() -> None:
    assert versions.KNOWN_RELEASES == {
        "ceresdb": serverschema.CERESDB_VERSIONS,
        "horaedb": serverschema.HORAEDB_VERSIONS,
    }


def test_at_least_fifteen_cases() -> None:
    assert len(INVALID) >= 15


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_file_is_rejected_with_its_key_path(write, capsys, text: str, expected: str) -> None:
    path = write(text)
    code = commands.main(["validate", "-c", str(path)])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert expected in err, err
    assert "Traceback" not in out + err


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_file_is_never_rendered(write, tmp_path: Path, capsys, text: str, expected: str) -> None:
    out_dir = tmp_path / "out"
    assert commands.main(["render", "-c", str(write(text)), "-o", str(out_dir)]) == 2
    assert not out_dir.exists()


def test_the_real_command_prints_no_traceback(write) -> None:
    path = write(BASE + '\n[ceresdb]\nlease = "15s"\n')
    result = subprocess.run(
        [sys.executable, "-m", "ceres_supervisor", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "ceresdb.lease" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_every_problem_is_reported_at_once(write) -> None:
    text = (
        BASE.replace("grpc_port = 8832", "grpc_port = 8831")
        + '\n[ceresdb]\nlease = "20s"\nshard_lock_ttl = 1\n'
    )
    with pytest.raises(loading.DesiredStateError) as info:
        loading.load(write(text))
    paths = {p.path for p in info.value.problems}
    assert {"ceresdb.nodes[1].grpc_port", "ceresdb.lease", "ceresdb.shard_lock_ttl"} <= paths


def test_valid_file_exits_zero(write, capsys) -> None:
    assert commands.main(["validate", "-c", str(write(BASE))]) == 0
    assert "valid" in capsys.readouterr().out


def test_meta_sharing_a_machine_warns_about_forwarding(capsys) -> None:
    assert commands.main(["validate", "-c", "etc/ceres-supervisor/examples/three-meta.toml"]) == 0
    assert "forwards API calls" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["validate", "render"])
def test_secret_value_never_printed_even_in_errors(
    write, tmp_path: Path, capfd, monkeypatch, command: str
) -> None:
    """A secret that resolves, in a file that is invalid for another reason, and in a valid one."""
    monkeypatch.setenv("CERES_TEST_SECRET", SECRET_VALUE)
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET_VALUE + "\n")
    store = (
        '\n[ceresdb.object_store]\ntype = "Aliyun"\nkey_id = { env = "CERES_TEST_SECRET" }\n'
        f'key_secret = {{ file = "{secret_file}" }}\nendpoint = "e"\nbucket = "b"\nprefix = "p"\n'
    )
    for text in (BASE + store, BASE + store + '\n[ceresdb]\nlease = "99s"\n'):
        args = [command, "-c", str(write(text))] + (
            ["-o", str(tmp_path / "o")] if command == "render" else []
        )
        result = subprocess.run(
            [sys.executable, "-m", "ceres_supervisor", *args], capture_output=True, text=True, check=False
        )
        assert SECRET_VALUE not in result.stdout + result.stderr
