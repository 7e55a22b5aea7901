"""The stand-in images behave like the real CeresMeta and CeresDB where the supervisor can see it.

Every test starts real containers (host networking, loopback addresses only) from configs our
own renderer wrote, and removes them afterwards.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from docker.models.containers import Container

from ceres_supervisor.spec import DesiredState

from ..helpers import http_json, shard_lock_leases, shard_locks, wait_until
from ..standins import StandIns, cluster_toml, kill_main_process


@pytest.fixture
def standins(docker_client: docker.DockerClient, tmp_path: Path) -> Iterator[StandIns]:
    runner = StandIns(docker_client, tmp_path)
    try:
        yield runner
    finally:
        runner.cleanup()


def client_url(spec: DesiredState, i: int = 0) -> str:
    node = spec.meta.nodes[i]
    return f"http://{node.host}:{node.client_port}"


def meta_http(spec: DesiredState, i: int = 0) -> str:
    node = spec.meta.nodes[i]
    return f"http://{node.host}:{node.http_port}"


def endpoint(spec: DesiredState, i: int) -> str:
    node = spec.ceresdb.nodes[i]
    return f"{node.host}:{node.grpc_port}"


def start_meta(standins: StandIns, spec: DesiredState) -> list[Container]:
    # All members together: etcd quorum needs them all.
    containers = [standins.run(spec, node.name) for node in spec.meta.nodes]

    def cluster_listed() -> bool:
        for i in range(len(spec.meta.nodes)):
            status, body = http_json(f"{meta_http(spec, i)}/api/v1/clusters")
            if status == 200 and any(c["Name"] == "defaultCluster" for c in body["data"]):  # type: ignore[index]
                return True
        return False

    wait_until(cluster_listed, 60, "meta to list defaultCluster")
    return containers


def all_shards_locked(spec: DesiredState) -> dict[int, str]:
    expected = {endpoint(spec, i) for i in range(len(spec.ceresdb.nodes))}

    def locked() -> dict[int, str] | None:
        locks = shard_locks(client_url(spec))
        return locks if len(locks) == 8 and set(locks.values()) == expected else None

    return wait_until(locked, 60, "every shard locked by the CeresDB nodes")


@pytest.mark.parametrize("meta_count", [1, 3])
def test_cluster_forms(standins: StandIns, meta_count: int) -> None:
    spec = standins.load(cluster_toml(meta=meta_count, db=2))
    start_meta(standins, spec)
    _status, members = http_json(f"{client_url(spec)}/v3/cluster/member/list", {})
    assert len(members["members"]) == meta_count  # type: ignore[index]
    _status, status = http_json(f"{client_url(spec)}/v3/maintenance/status", {})
    assert int(status["leader"]) != 0  # type: ignore[index]
    for node in spec.ceresdb.nodes:
        standins.run(spec, node.name)
    locks = all_shards_locked(spec)
    assert sorted(locks) == list(range(8))
    # getNodeShards: the real response shape, every shard assigned across both nodes.
    def node_shards() -> dict[str, object] | None:
        for i in range(meta_count):  # ask every member; the leader answers without forwarding
            try:
                status, body = http_json(f"{meta_http(spec, i)}/api/v1/getNodeShards", {"clusterName": "defaultCluster"})
            except OSError:
                continue
            if status == 200:
                return body  # type: ignore[return-value]
        return None

    body = wait_until(node_shards, 10, "getNodeShards from the leader")
    assert body["status"] == "success"
    shards = body["data"]["NodeShards"]  # type: ignore[index]
    assert {s["ShardInfo"]["ID"] for s in shards} == set(range(8))
    assert {s["ShardNode"]["NodeName"] for s in shards} == {endpoint(spec, 0), endpoint(spec, 1)}
    for node in spec.ceresdb.nodes:
        assert http_json(f"http://{node.host}:{node.http_port}/") == (200, {"status": "ok"})


def test_health_route_and_error_envelope_follow_the_version(standins: StandIns) -> None:
    spec = standins.load(cluster_toml(meta=1, db=1))
    start_meta(standins, spec)
    assert http_json(f"{meta_http(spec)}/api/v1/healthCheck") == (200, {"status": "success"})
    assert http_json(f"{meta_http(spec)}/api/v1/health")[0] == 404  # only from 1.2.7
    status, body = http_json(f"{meta_http(spec)}/api/v1/getNodeShards", {"clusterName": "nope"})
    assert status == 404 and body["status"] == "error" and body["error"].startswith("(#404)")  # type: ignore[index]


def test_sigkill_releases_locks_within_ttl_and_restart_waits_for_old_lease(standins: StandIns) -> None:
    spec = standins.load(cluster_toml(meta=1, db=2))
    start_meta(standins, spec)
    containers = {n.name: standins.run(spec, n.name) for n in spec.ceresdb.nodes}
    all_shards_locked(spec)
    mine = endpoint(spec, 0)
    killed_at = time.monotonic()
    kill_main_process(containers["db0"])
    # Its locks disappear within the TTL (15 s here), the other node's stay.
    wait_until(lambda: mine not in shard_locks(client_url(spec)).values(), 15 + 5, "db0's locks to expire")
    gone_after = time.monotonic() - killed_at
    assert gone_after > 5, f"locks vanished after {gone_after:.1f}s: they must outlive the process"
    assert endpoint(spec, 1) in shard_locks(client_url(spec)).values()
    containers["db0"].wait(timeout=10)
    containers["db0"].start()
    all_shards_locked(spec)

    # Restarted at once, a node waits for its own old locks to expire before reopening.
    old_leases = {lease for holder, lease in shard_lock_leases(client_url(spec)).values() if holder == mine}
    killed_at = time.monotonic()
    kill_main_process(containers["db0"])
    containers["db0"].wait(timeout=10)
    containers["db0"].start()
    wait_until(lambda: http_json(f"http://127.0.0.1:{spec.ceresdb.nodes[0].http_port}/")[0] == 200, 10, "db0 answering")

    def reopened() -> bool:
        mine_now = [lease for holder, lease in shard_lock_leases(client_url(spec)).values() if holder == mine]
        return len(mine_now) == 4 and not set(mine_now) & old_leases

    wait_until(reopened, 30, "db0's shards locked under new leases")
    reopened_after = time.monotonic() - killed_at
    assert reopened_after > 8, f"reopened after {reopened_after:.1f}s, before its old 15 s leases could expire"


def test_ceresdb_started_before_meta_exits_1(standins: StandIns) -> None:
    spec = standins.load(cluster_toml(meta=1, db=1))
    container = standins.run(spec, "db0")  # nothing listens on meta_addr
    assert container.wait(timeout=20)["StatusCode"] == 1
    assert b"fail to build meta client" in container.logs()


def test_ceresdb_exits_1_while_the_cluster_is_not_created_yet(standins: StandIns) -> None:
    spec = standins.load(cluster_toml(meta=1, db=1))
    standins.run(spec, "meta0")
    wait_until(lambda: http_json(f"{client_url(spec)}/health")[0] == 200, 30, "etcd health")
    container = standins.run(spec, "db0")  # meta healthy, but the leader creates the cluster seconds later
    assert container.wait(timeout=20)["StatusCode"] == 1
    assert b"cluster not found" in container.logs()


def test_port_in_server_addr_registers_a_wrong_name_that_gets_no_shards(standins: StandIns) -> None:
    spec = standins.load(cluster_toml(meta=1, db=2))
    (meta,) = start_meta(standins, spec)
    wrong = f"{spec.ceresdb.nodes[1].host}:{spec.ceresdb.nodes[1].grpc_port}"
    standins.run(spec, "db0")
    standins.run(spec, "db1", env={"CERESDB_SERVER_ADDR": wrong})  # the seed's "{ip}:8831" form
    wrong_name = f"{wrong}:{spec.ceresdb.nodes[1].grpc_port}"

    def assigned() -> set[str] | None:
        _status, body = http_json(f"{meta_http(spec)}/api/v1/getNodeShards", {"clusterName": "defaultCluster"})
        names = {s["ShardNode"]["NodeName"] for s in body["data"]["NodeShards"]}  # type: ignore[index]
        return names or None

    assert wait_until(assigned, 30, "shards assigned") == {endpoint(spec, 0), wrong_name}
    wait_until(lambda: len(shard_locks(client_url(spec))) == 4, 20, "db0's four shards locked")
    # Meta tried to dial the wrong name to open the other four, and could not.
    failed = f"dispatch open shard failed endpoint={wrong_name}".encode()
    wait_until(lambda: meta.logs().count(failed) >= 2, 20, "meta's failed OpenShard dispatches")
    assert set(shard_locks(client_url(spec)).values()) == {endpoint(spec, 0)}


def test_three_meta_members_not_all_started_exit_0_after_the_timeout(standins: StandIns) -> None:
    spec = standins.load(cluster_toml(meta=3, db=2, extra="[meta.config]\netcd-start-timeout-ms = 3000\n"))
    started = time.monotonic()
    container = standins.run(spec, "meta0")
    assert container.wait(timeout=30)["StatusCode"] == 0
    assert time.monotonic() - started >= 3
    assert b"fail to start etcd server" in container.logs()


def test_frozen_keepalives_expire_the_locks_while_http_answers(standins: StandIns) -> None:
    spec = standins.load(cluster_toml(meta=1, db=2))
    start_meta(standins, spec)
    containers = {n.name: standins.run(spec, n.name) for n in spec.ceresdb.nodes}
    all_shards_locked(spec)
    result = containers["db0"].exec_run(["ceres-emulator-fault", "freeze-lease"])
    assert result.exit_code == 0, result.output
    wait_until(lambda: endpoint(spec, 0) not in shard_locks(client_url(spec)).values(), 25, "db0's locks to expire")
    db0 = spec.ceresdb.nodes[0]
    assert http_json(f"http://{db0.host}:{db0.http_port}/") == (200, {"status": "ok"})
    containers["db0"].reload()
    assert containers["db0"].status == "running"


def test_fault_hooks_freeze_http_and_exit_code(standins: StandIns) -> None:
    spec = standins.load(cluster_toml(meta=1, db=1))
    start_meta(standins, spec)
    container = standins.run(spec, "db0")
    db0 = spec.ceresdb.nodes[0]
    url = f"http://{db0.host}:{db0.http_port}/"
    wait_until(lambda: http_json(url)[0] == 200, 20, "db0 answering")
    container.exec_run(["ceres-emulator-fault", "freeze-http"])
    with pytest.raises(TimeoutError):
        http_json(url, timeout_s=1.0)
    container.exec_run(["ceres-emulator-fault", "clear"])
    assert http_json(url) == (200, {"status": "ok"})
    container.exec_run(["ceres-emulator-fault", "exit", "3"])
    assert container.wait(timeout=10)["StatusCode"] == 3


def test_unknown_top_level_section_exits_101(standins: StandIns) -> None:
    spec = standins.load(cluster_toml(meta=1, db=1))
    node_config = standins.root / "config" / "db0" / "ceresdb.toml"
    container = standins.run(spec, "db0")
    container.wait(timeout=20)
    node_config.write_text(node_config.read_text() + "\n[analytics]\nx = 1\n")  # misspelt section
    container.start()
    assert container.wait(timeout=20)["StatusCode"] == 101


def test_build_is_idempotent_and_images_start_fast(docker_client: docker.DockerClient, standins: StandIns) -> None:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "tests/emulator/build.py", "1.2.2"], capture_output=True, text=True, check=True)
    assert "up to date" in result.stderr
    assert time.monotonic() - started < 5
    spec = standins.load(cluster_toml(meta=1, db=1))
    start_meta(standins, spec)
    started = time.monotonic()
    standins.run(spec, "db0")
    db0 = spec.ceresdb.nodes[0]
    wait_until(lambda: http_json(f"http://{db0.host}:{db0.http_port}/")[0] == 200, 10, "db0 answering", interval_s=0.02)
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(("version", "health", "root"), [("1.2.7", "/api/v1/health", "/ceresdb"), ("2.0.0", "/api/v1/health", "/horaedb")])
def test_later_versions(standins: StandIns, version: str, health: str, root: str) -> None:
    """1.2.7 reads `http-port` and serves /health; 2.0.0 is HoraeDB: /horaedb root, HORAEDB_SERVER_ADDR."""
    spec = standins.load(cluster_toml(meta=1, db=2, version=version))
    start_meta(standins, spec)
    assert http_json(f"{meta_http(spec)}{health}") == (200, {"status": "success"})
    assert http_json(f"{meta_http(spec)}/api/v1/healthCheck")[0] == 404
    for node in spec.ceresdb.nodes:
        standins.run(spec, node.name)
    expected = {endpoint(spec, 0), endpoint(spec, 1)}
    wait_until(lambda: len(locks := shard_locks(client_url(spec), root=root)) == 8 and set(locks.values()) == expected,
               60, f"every shard locked under {root}")
    db0 = spec.ceresdb.nodes[0]
    status, shards = http_json(f"http://{db0.host}:{db0.http_port}/debug/shards")
    assert status == 200 and len(shards) == 4  # type: ignore[arg-type]
