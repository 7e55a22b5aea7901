"""The stand-in images behave like the real CeresMeta and CeresDB where the supervisor can see it.

Every test starts real containers (host networking, loopback addresses only) from configs our
own renderer wrote, and removes them afterwards. Meta's scheduler tick is shortened to TICK_S
with the tick hook, and the CeresDB heartbeat to 2 s (lease 3 s), so that the real pace of the
version (one shard per tick at 1.2.2, batches later) is observable in seconds.
"""

from __future__ import annotations

import base64
import importlib.util
import itertools
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import docker
import pytest
from docker.models.containers import Container

from ceres_supervisor.model.spec import DesiredState
from testkit import emulator as build
from testkit.helpers import (
    TEST_LABEL,
    etcd_member_status,
    etcd_range,
    free_ports,
    http_json,
    meta_leader,
    meta_leader_key,
    node_shards,
    shard_lock_leases,
    shard_locks,
    wait_until,
)
from testkit.standins import StandIns, cluster_toml, emulator_hook, kill_main_process, set_scheduler_tick

HERE = Path(__file__).resolve().parent
IMAGE_PREFIX = build.REPOSITORY
TICK_S = 0.5
"""Meta's scheduler tick in these tests (the real one: 5 s)."""
LEASE = "3s"
"""CeresDB's meta_client.lease in these tests: a heartbeat every 2 s (the default 10 s: 6.7 s)."""


def _load_scheduling() -> ModuleType:
    """The stand-in's scheduling module (pure, no I/O), to compare with what the containers did."""
    spec = importlib.util.spec_from_file_location("emulator_scheduling", HERE / "image" / "scheduling.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


scheduling = _load_scheduling()


@pytest.fixture
def standins(docker_client: docker.DockerClient, tmp_path: Path) -> Iterator[StandIns]:
    runner = StandIns(docker_client, tmp_path)
    try:
        yield runner
    finally:
        runner.cleanup()


def load(standins: StandIns, meta: int = 1, db: int = 2, version: str = "1.2.2", extra: str = "") -> DesiredState:
    text = cluster_toml(meta=meta, db=db, version=version, extra=extra, image_prefix=IMAGE_PREFIX)
    return standins.load(text.replace("shard_lock_ttl = 15\n", f'shard_lock_ttl = 15\nlease = "{LEASE}"\n'))


def load_split_at_1_2_2(standins: StandIns) -> DesiredState:
    """Two CeresDB nodes whose names 1.2.2's crc32 ring gives a shard each (it often does not:
    random loopback ports put all 8 shards on one node about one time in eight)."""
    for _ in range(50):
        spec = load(standins, db=2)
        owners = {scheduling.crc32_ring_owner([endpoint(spec, 0), endpoint(spec, 1)], s) for s in range(8)}
        if len(owners) == 2:
            return spec
    raise AssertionError("no port pair split the shards")


def client_url(spec: DesiredState, i: int = 0) -> str:
    node = spec.meta.nodes[i]
    return f"http://{node.host}:{node.client_port}"


def meta_http(spec: DesiredState, i: int = 0) -> str:
    node = spec.meta.nodes[i]
    return f"http://{node.host}:{node.http_port}"


def db_http(spec: DesiredState, i: int) -> str:
    node = spec.ceresdb.nodes[i]
    return f"http://{node.host}:{node.http_port}"


def endpoint(spec: DesiredState, i: int) -> str:
    node = spec.ceresdb.nodes[i]
    return f"{node.host}:{node.grpc_port}"


def root(spec: DesiredState) -> str:
    return "/horaedb" if spec.cluster.version.startswith("2") else "/ceresdb"


def health_path(version: str) -> str:
    return "/api/v1/healthCheck" if version < "1.2.7" else "/api/v1/health"


def leader_index(spec: DesiredState) -> int | None:
    """The meta member named by the leader key (protobuf Member, endpoint = advertise-client-url)."""
    key = meta_leader_key(spec.cluster.version, root(spec))
    for i in range(len(spec.meta.nodes)):
        try:
            found = meta_leader(client_url(spec, i), key)
        except (OSError, AssertionError):
            continue
        if found is None:
            return None
        (_name, _id, leader_endpoint), _lease = found
        return next(j for j in range(len(spec.meta.nodes)) if client_url(spec, j) == leader_endpoint)
    return None


def wait_leader(spec: DesiredState) -> int:
    found: list[int] = []

    def known() -> bool:
        i = leader_index(spec)
        found[:] = [] if i is None else [i]
        return bool(found)

    wait_until(known, 30, "a meta leader")
    return found[0]


def leader_http(spec: DesiredState) -> str:
    return meta_http(spec, wait_leader(spec))


def start_meta(standins: StandIns, spec: DesiredState, tick_s: float = TICK_S) -> list[Container]:
    # All members together: etcd quorum needs them all.
    containers = [standins.run(spec, node.name) for node in spec.meta.nodes]
    set_scheduler_tick(containers, tick_s)

    def cluster_listed() -> bool:
        i = leader_index(spec)  # only the leader: a follower on one machine forwards to itself
        if i is None:
            return False
        status, body = http_json(f"{meta_http(spec, i)}/api/v1/clusters")
        return status == 200 and any(c["Name"] == "defaultCluster" for c in body["data"])  # type: ignore[index]

    wait_until(cluster_listed, 60, "the meta leader to list defaultCluster")
    return containers


def start_db(standins: StandIns, spec: DesiredState) -> dict[str, Container]:
    return {n.name: standins.run(spec, n.name) for n in spec.ceresdb.nodes}


def all_shards_locked(spec: DesiredState, timeout_s: float = 60) -> dict[int, str]:
    """Every shard in meta's topology, and each locked by the node the topology names."""
    leader = leader_http(spec)
    expected = {endpoint(spec, i) for i in range(len(spec.ceresdb.nodes))}

    def settled() -> dict[int, str] | None:
        topology = dict(node_shards(leader))
        locks = shard_locks(client_url(spec), root=root(spec))
        ok = len(topology) == 8 and locks == topology and set(locks.values()) <= expected
        return locks if ok else None

    locks = wait_until(settled, timeout_s, "every shard locked by the node meta's topology names")
    time.sleep(3 * TICK_S)  # Prepare -> Stable takes one more tick, which no API shows
    return locks


def busiest(spec: DesiredState, locks: dict[int, str]) -> int:
    """The CeresDB node holding the most shards (at least 4 of 8 with two nodes)."""
    return max(range(len(spec.ceresdb.nodes)), key=lambda i: sum(h == endpoint(spec, i) for h in locks.values()))


# --- the cluster, and the scheduler's pace per version (reference 2.3, 2.5) -----------------------

@pytest.mark.parametrize("meta_count", [1, 3])
def test_cluster_forms(standins: StandIns, meta_count: int) -> None:
    spec = load(standins, meta=meta_count, db=2)
    start_meta(standins, spec)
    _status, members = http_json(f"{client_url(spec)}/v3/cluster/member/list", {})
    assert len(members["members"]) == meta_count  # type: ignore[index]
    start_db(standins, spec)
    locks = all_shards_locked(spec)
    # getNodeShards from the leader: the real shape, the topology the nodes reported.
    status, body = http_json(f"{leader_http(spec)}/api/v1/getNodeShards", {"clusterName": "defaultCluster"})
    assert status == 200 and body["status"] == "success"  # type: ignore[index]
    shards = body["data"]["NodeShards"]  # type: ignore[index]
    assert {s["ShardInfo"]["ID"]: s["ShardNode"]["NodeName"] for s in shards} == locks
    assert all(set(s["ShardInfo"]) == {"ID", "Role", "Version"} for s in shards)  # Status only from 1.2.7
    for i in range(len(spec.ceresdb.nodes)):
        assert http_json(f"{db_http(spec, i)}/") == (200, {"status": "ok"})


@pytest.mark.parametrize("version", ["1.2.2", "1.2.7"])
def test_first_assignment_uses_the_version_picker_and_pace(standins: StandIns, version: str) -> None:
    """1.2.2: one shard per tick, on the node its crc32 ring picks; 1.2.7: all at once, 4 and 4."""
    spec = load(standins, db=2, version=version)
    start_meta(standins, spec)
    start_db(standins, spec)
    first_seen: dict[int, float] = {}

    def eight_seen() -> bool:
        now = time.monotonic()
        for shard in shard_locks(client_url(spec)):
            first_seen.setdefault(shard, now)
        return len(first_seen) == 8

    wait_until(eight_seen, 60, "eight shard locks", interval_s=0.05)
    names = [endpoint(spec, 0), endpoint(spec, 1)]
    times = sorted(first_seen.values())
    if version == "1.2.2":
        expected = {s: scheduling.crc32_ring_owner(names, s) for s in range(8)}
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) > 0.6 * TICK_S, f"two shards opened within one tick: {gaps}"
    else:
        expected = scheduling.uniform_owners(names, 8)
        assert times[-1] - times[0] < 2 * TICK_S, f"not one batch: {[t - times[0] for t in times]}"
    assert shard_locks(client_url(spec)) == expected


@pytest.mark.parametrize("version", ["1.2.2", "1.2.7"])
def test_restarted_at_once_a_node_waits_out_its_old_locks_then_reopens_at_the_version_pace(
        standins: StandIns, version: str) -> None:
    spec = load(standins, db=2, version=version)
    start_meta(standins, spec)
    containers = start_db(standins, spec)
    locks = all_shards_locked(spec)
    victim = busiest(spec, locks)
    mine = endpoint(spec, victim)
    in_topology_order = [s for s, node in node_shards(leader_http(spec)) if node == mine]
    old = {s: lease for s, (holder, lease) in shard_lock_leases(client_url(spec)).items() if holder == mine}
    assert sorted(old) == sorted(in_topology_order)

    killed_at = time.monotonic()
    container = containers[spec.ceresdb.nodes[victim].name]
    kill_main_process(container)
    container.wait(timeout=10)
    container.start()
    gone_at: dict[int, float] = {}
    back_at: dict[int, float] = {}

    def all_back() -> bool:
        now, leases = time.monotonic(), shard_lock_leases(client_url(spec))
        for shard, lease in old.items():
            holder, current = leases.get(shard, ("", 0))
            if current != lease:
                gone_at.setdefault(shard, now)
                if holder == mine and current:
                    back_at.setdefault(shard, now)
        return len(back_at) == len(old)

    wait_until(all_back, 50, f"{mine}'s shards locked again under new leases", interval_s=0.05)
    first = min(back_at.values()) - killed_at
    # TTL 15 s, renewed every 5 s: the old locks outlive the process by 10 to 15 s, and until then
    # every OpenShard fails; the node itself never waits nor retries.
    assert first > 8, f"a shard came back {first:.1f}s after the kill, before its old lock could expire"
    assert all(back_at[s] >= gone_at[s] for s in old)
    order = sorted(back_at, key=lambda s: back_at[s])
    if version == "1.2.2":
        # One open-shard per tick for the whole cluster, the first shard in topology order first:
        # the node's shards come back in topology order, never two in one tick.
        assert order == in_topology_order, (order, in_topology_order)
        times = sorted(back_at.values())
        assert min(b - a for a, b in itertools.pairwise(times)) > 0.6 * TICK_S
    else:
        # Batched: each shard is back within a tick or so of its old lock's expiry.
        lags = {s: round(back_at[s] - gone_at[s], 2) for s in old}
        assert max(lags.values()) < 4 * TICK_S + 0.5, lags


@pytest.mark.parametrize("version", ["1.2.2", "1.2.7", "2.0.0"])
def test_an_offline_assigned_node_stops_every_reopen_until_2_0_0(standins: StandIns, version: str) -> None:
    spec = load_split_at_1_2_2(standins) if version == "1.2.2" else load(standins, db=2, version=version)
    start_meta(standins, spec)
    containers = start_db(standins, spec)
    all_shards_locked(spec)
    topology = node_shards(leader_http(spec))
    first = next(i for i in range(2) if endpoint(spec, i) == topology[0][1])  # met first by the walk
    other = 1 - first
    theirs = sorted(s for s, node in topology if node == endpoint(spec, other))
    assert theirs, topology
    first_c, other_c = (containers[spec.ceresdb.nodes[i].name] for i in (first, other))
    first_c.stop(timeout=10)  # SIGTERM: exits 0 without releasing its locks
    stopped_at = time.monotonic()
    kill_main_process(other_c)
    other_c.wait(timeout=10)
    held = {endpoint(spec, first), endpoint(spec, other)}
    wait_until(lambda: not set(shard_locks(client_url(spec), root=root(spec)).values()) & held, 25, "both nodes' locks to expire")
    time.sleep(max(0.0, stopped_at + 11 - time.monotonic()))  # the stopped node is offline (10 s)
    other_c.start()
    mine = endpoint(spec, other)

    def reopened() -> list[int]:
        return sorted(s for s, h in shard_locks(client_url(spec), root=root(spec)).items() if h == mine)

    if version >= "2.0.0":
        # Offline nodes are skipped: the restarted node gets its shards back.
        assert wait_until(lambda: reopened() == theirs or None, 15, f"{mine}'s shards reopened") is True
        return
    # The pass meets the offline node first and aborts: nothing reopens anywhere.
    wait_until(lambda: http_json(f"{db_http(spec, other)}/")[0] == 200, 10, "the restarted node answering")
    until = time.monotonic() + 16 * TICK_S
    while time.monotonic() < until:
        assert reopened() == [], "a shard reopened while an assigned node was offline"
        time.sleep(0.25)
    first_c.start()  # back online: the walk passes it, and reopening starts
    wait_until(lambda: shard_locks(client_url(spec), root=root(spec)) or None, 15,
               "a shard reopened once every assigned node is online")


def test_scheduler_rules_per_version() -> None:
    """The pure rules behind the tests above, on a fixed topology: A owns 0 and 2, B owns 1 and 3,
    in topology order 0 (A), 1 (B), 2 (A), 3 (B)."""
    view = scheduling.View(scheduling.STABLE, 5, [(0, "A"), (1, "B"), (2, "A"), (3, "B")])
    rng = random.Random(0)
    now = 100.0
    online, offline = 99.0, 80.0

    def run(version: tuple[int, int, int], a: tuple[float, tuple[int, ...]], b: tuple[float, tuple[int, ...]] | None) -> object:
        registered = {"A": scheduling.Registered(*a)}
        if b is not None:
            registered["B"] = scheduling.Registered(*b)
        result = scheduling.static_schedule(version, view, 4, registered, now, rng)
        return result.opens if result.error is None else "abort"

    # A restarted (reports nothing), B fine: 1.2.2 one shard, later versions all of A's.
    assert run((1, 2, 2), (online, ()), (online, (1, 3))) == [(0, "A")]
    assert run((1, 2, 7), (online, ()), (online, (1, 3))) == [(0, "A"), (2, "A")]
    # B restarted and A offline: A is met first, the pass aborts up to 1.2.7; 2.0.0 skips A.
    assert run((1, 2, 2), (offline, (0, 2)), (online, ())) == "abort"
    assert run((1, 2, 7), (offline, (0, 2)), (online, ())) == "abort"
    assert run((2, 0, 0), (offline, (0, 2)), (online, ())) == [(1, "B"), (3, "B")]
    # A restarted and B offline: at 1.2.2 shard 0 is met before B, so it still reopens;
    # 1.2.7 meets B later in the same walk and drops everything it collected.
    assert run((1, 2, 2), (online, ()), (offline, (1, 3))) == [(0, "A")]
    assert run((1, 2, 7), (online, ()), (offline, (1, 3))) == "abort"
    assert run((1, 2, 7), (online, ()), None) == "abort"  # never registered with this leader: the same
    # Registration: Prepare one heartbeat after MinNodeCount nodes registered; the topology is
    # what the nodes report, the last reporter first.
    fresh, registered = scheduling.View(), {}
    assert scheduling.register_node(fresh, registered, "A", [], 2, 0.0) and fresh.state == scheduling.EMPTY
    scheduling.register_node(fresh, registered, "B", [], 2, 0.0)
    assert fresh.state == scheduling.EMPTY
    scheduling.register_node(fresh, registered, "A", [], 2, 1.0)
    assert fresh.state == scheduling.PREPARE and fresh.shard_nodes == []
    scheduling.register_node(fresh, registered, "A", [0, 2], 2, 2.0)
    scheduling.register_node(fresh, registered, "B", [1], 2, 2.0)
    assert fresh.shard_nodes == [(1, "B"), (0, "A"), (2, "A")]
    assert not scheduling.prepare_finished(fresh, 4)
    # murmur3 as spaolacci/murmur3 v1.1.0 (its own test vectors).
    assert scheduling.murmur3_sum64(b"hello") == 0xCBD8A7B341BD9B02
    assert scheduling.murmur3_sum64(b"The quick brown fox jumps over the lazy dog.") == 0xCD99481F9EE902C9
    assert scheduling.murmur3_sum64(b"hello", 1) == 0xA78DDFF5ADAE8D10


def test_health_route_and_error_envelope_follow_the_version(standins: StandIns) -> None:
    spec = load(standins, meta=1, db=1)
    start_meta(standins, spec)
    assert http_json(f"{meta_http(spec)}/api/v1/healthCheck") == (200, {"status": "success"})
    assert http_json(f"{meta_http(spec)}/api/v1/health")[0] == 404  # only from 1.2.7
    status, body = http_json(f"{meta_http(spec)}/api/v1/getNodeShards", {"clusterName": "nope"})
    # ErrGetNodeShards is Internal; the cluster's own NotFound is only in the message.
    assert status == 500 and body["status"] == "error", body  # type: ignore[index]
    assert body["error"] == "(#500)get node shards, cause:<nil>", body  # type: ignore[index]
    assert "cluster not found" in body["msg"], body  # type: ignore[index]


@pytest.mark.parametrize(("version", "health", "root_path"),
                         [("1.2.7", "/api/v1/health", "/ceresdb"), ("2.0.0", "/api/v1/health", "/horaedb")])
def test_later_versions(standins: StandIns, version: str, health: str, root_path: str) -> None:
    """1.2.7 reads `http-port` and serves /health; 2.0.0 is HoraeDB: /horaedb root, HORAEDB_SERVER_ADDR."""
    spec = load(standins, meta=1, db=2, version=version)
    start_meta(standins, spec)
    assert http_json(f"{meta_http(spec)}{health}") == (200, {"status": "success"})
    assert http_json(f"{meta_http(spec)}/api/v1/healthCheck")[0] == 404
    start_db(standins, spec)
    locks = all_shards_locked(spec)
    assert root(spec) == root_path and len(locks) == 8
    status, body = http_json(f"{meta_http(spec)}/api/v1/getNodeShards", {"clusterName": "defaultCluster"})
    assert status == 200 and all(s["ShardInfo"]["Status"] == 0 for s in body["data"]["NodeShards"])  # type: ignore[index]
    status, shards = http_json(f"{db_http(spec, 0)}/debug/shards")
    assert status == 200 and len(shards) == sum(h == endpoint(spec, 0) for h in locks.values())  # type: ignore[arg-type]


# --- the meta leader key and forwarding (reference 2.4, 2.6) -------------------------------------

@pytest.mark.parametrize(("version", "meta_count"), [("1.2.2", 3), ("1.2.7", 1), ("2.0.0", 1)])
def test_leader_key_is_a_protobuf_member_under_a_lease(standins: StandIns, version: str, meta_count: int) -> None:
    spec = load(standins, meta=meta_count, db=1, version=version)
    start_meta(standins, spec)
    key = meta_leader_key(version, root(spec))
    other_key = f"{root(spec)}/members/leader" if key == "/members/leader" else "/members/leader"
    assert etcd_range(client_url(spec), other_key) == {}
    (value, lease) = etcd_range(client_url(spec), key)[key]
    found = meta_leader(client_url(spec), key)
    assert found is not None
    (name, ident, leader_endpoint), _lease = found
    i = next(j for j in range(meta_count) if client_url(spec, j) == leader_endpoint)  # first advertise-client-url
    assert spec.meta.nodes[i].name == name
    member_id, etcd_leader = etcd_member_status(client_url(spec, i))
    assert ident == member_id == etcd_leader  # the etcd leader campaigns, with its etcd member id
    # The exact bytes Go's proto.Marshal writes: name (1), id (2, varint), endpoint (3).
    varint = bytearray()
    n = ident
    while True:
        varint.append((n & 0x7F) | (0x80 if n >> 7 else 0))
        n >>= 7
        if not n:
            break
    assert value == (b"\x0a" + bytes([len(name)]) + name.encode() + b"\x10" + bytes(varint)
                     + b"\x1a" + bytes([len(leader_endpoint)]) + leader_endpoint.encode())
    _status, ttl = http_json(f"{client_url(spec)}/v3/lease/timetolive", {"ID": str(lease)})
    assert int(ttl["grantedTTL"]) == 10 and 0 < int(ttl["TTL"]) <= 10, ttl  # type: ignore[index]  # lease-sec


@pytest.mark.parametrize("version", ["1.2.2", "1.2.7"])
def test_a_follower_sharing_the_machine_forwards_to_itself_until_the_caller_gives_up(standins: StandIns, version: str) -> None:
    spec = load(standins, meta=3, db=1, version=version)
    containers = start_meta(standins, spec)
    leader = wait_leader(spec)
    follower = (leader + 1) % 3
    for i in range(3):  # the health route is answered locally, never forwarded
        assert http_json(f"{meta_http(spec, i)}{health_path(version)}") == (200, {"status": "success"})
    status, body = http_json(f"{meta_http(spec, leader)}/api/v1/clusters")
    assert status == 200 and [c["Name"] for c in body["data"]] == ["defaultCluster"]  # type: ignore[index]
    status, _ = http_json(f"{meta_http(spec, leader)}/api/v1/getNodeShards", {"clusterName": "defaultCluster"})
    assert status == 200
    # <leader's advertise host>:<the follower's own port> is the follower itself: no answer, ever.
    with pytest.raises(TimeoutError):
        http_json(f"{meta_http(spec, follower)}/api/v1/clusters", timeout_s=3)
    with pytest.raises(TimeoutError):
        http_json(f"{meta_http(spec, follower)}/api/v1/getNodeShards", {"clusterName": "defaultCluster"}, timeout_s=2)
    hops = b"receive http request handlerName=listClusters"
    follower_c = containers[follower]
    assert follower_c.logs().count(b"forwarded_to=") >= 3  # each hop logged, one a second
    assert hops in follower_c.logs()
    # The caller gave up: the recursion unwinds and the logging stops.
    time.sleep(1.5)
    settled = follower_c.logs().count(b"forwarded_to=")
    time.sleep(2.5)
    assert follower_c.logs().count(b"forwarded_to=") == settled
    assert b"forwarded_to=" not in containers[leader].logs()


# --- fault and test hooks --------------------------------------------------------------------------

def test_meta_fault_hooks_freeze_http_and_exit_code(standins: StandIns) -> None:
    spec = load(standins, meta=1, db=1)
    (meta,) = start_meta(standins, spec)
    health = f"{meta_http(spec)}/api/v1/healthCheck"
    emulator_hook(meta, "freeze-http")
    for url in (health, f"{meta_http(spec)}/api/v1/clusters", f"{meta_http(spec)}/no/such/route"):
        with pytest.raises(TimeoutError):
            http_json(url, timeout_s=1.0)
    with pytest.raises(TimeoutError):
        http_json(f"{meta_http(spec)}/api/v1/getNodeShards", {"clusterName": "defaultCluster"}, timeout_s=1.0)
    tick = meta.exec_run(["cat", "/run/ceres-emulator/tick"]).output
    assert isinstance(tick, bytes) and tick.strip() == str(TICK_S).encode()
    emulator_hook(meta, "clear")
    assert http_json(health) == (200, {"status": "success"})
    emulator_hook(meta, "exit", "3")
    assert meta.wait(timeout=10)["StatusCode"] == 3


def test_ceresdb_fault_hooks_freeze_http_and_exit_code(standins: StandIns) -> None:
    spec = load(standins, meta=1, db=1)
    start_meta(standins, spec)
    container = standins.run(spec, "db0")
    url = f"{db_http(spec, 0)}/"
    wait_until(lambda: http_json(url)[0] == 200, 20, "db0 answering")
    emulator_hook(container, "freeze-http")
    with pytest.raises(TimeoutError):
        http_json(url, timeout_s=1.0)
    with pytest.raises(TimeoutError):  # every route, POST included
        http_json(f"{db_http(spec, 0)}/debug/flush_memtable", {}, timeout_s=1.0)
    emulator_hook(container, "clear")
    assert http_json(url) == (200, {"status": "ok"})
    emulator_hook(container, "exit", "3")
    assert container.wait(timeout=10)["StatusCode"] == 3


def test_ceresdb_ignore_sigterm_hook_makes_a_stop_last_until_the_kill(standins: StandIns) -> None:
    spec = load(standins, meta=1, db=1)
    start_meta(standins, spec)
    container = standins.run(spec, "db0")
    wait_until(lambda: http_json(f"{db_http(spec, 0)}/")[0] == 200, 20, "db0 answering")
    emulator_hook(container, "ignore-sigterm")
    started = time.monotonic()
    container.stop(timeout=3)  # SIGTERM, ignored; SIGKILL after 3 s
    assert time.monotonic() - started >= 2.5
    container.reload()
    assert container.attrs["State"]["ExitCode"] == 137
    container.start()  # the hook is gone with the process that had it: a plain stop is quick again
    wait_until(lambda: http_json(f"{db_http(spec, 0)}/")[0] == 200, 20, "db0 answering again")
    started = time.monotonic()
    container.stop(timeout=10)
    assert time.monotonic() - started < 5


def test_frozen_keepalives_expire_the_locks_while_http_answers(standins: StandIns) -> None:
    spec = load(standins, meta=1, db=2)
    start_meta(standins, spec)
    containers = start_db(standins, spec)
    victim = busiest(spec, all_shards_locked(spec))
    emulator_hook(containers[spec.ceresdb.nodes[victim].name], "freeze-lease")
    wait_until(lambda: endpoint(spec, victim) not in shard_locks(client_url(spec)).values(), 25, "the locks to expire")
    assert http_json(f"{db_http(spec, victim)}/") == (200, {"status": "ok"})
    containers[spec.ceresdb.nodes[victim].name].reload()
    assert containers[spec.ceresdb.nodes[victim].name].status == "running"


def test_flush_memtable_answers_the_real_shape_and_is_recorded(standins: StandIns) -> None:
    spec = load(standins, meta=1, db=1)
    start_meta(standins, spec)
    container = standins.run(spec, "db0")
    wait_until(lambda: http_json(f"{db_http(spec, 0)}/")[0] == 200, 20, "db0 answering")
    before = time.time()
    for _ in range(2):
        assert http_json(f"{db_http(spec, 0)}/debug/flush_memtable", {}) == (200, {"success": [], "failed": []})
    result = container.exec_run(["cat", "/run/ceres-emulator/flushes"])
    assert result.exit_code == 0 and isinstance(result.output, bytes), result.output
    stamps = [float(line.split()[0]) for line in result.output.decode().splitlines()]
    assert len(stamps) == 2 and all(before - 1 <= t <= time.time() + 1 for t in stamps), stamps
    assert container.logs().count(b"flush memtable") == 2


# --- startup and configuration ---------------------------------------------------------------------

def test_ceresdb_started_before_meta_exits_1(standins: StandIns) -> None:
    spec = load(standins, meta=1, db=1)
    container = standins.run(spec, "db0")  # nothing listens on meta_addr
    assert container.wait(timeout=20)["StatusCode"] == 1
    assert b"fail to build meta client" in container.logs()


def test_ceresdb_exits_1_while_the_cluster_is_not_created_yet(standins: StandIns) -> None:
    spec = load(standins, meta=1, db=1)
    standins.run(spec, "meta0")
    wait_until(lambda: http_json(f"{client_url(spec)}/health")[0] == 200, 30, "etcd health")
    container = standins.run(spec, "db0")  # meta healthy, but the leader creates the cluster seconds later
    assert container.wait(timeout=20)["StatusCode"] == 1
    assert b"cluster not found" in container.logs()


def test_port_in_server_addr_registers_a_wrong_name_that_never_opens_a_shard(standins: StandIns) -> None:
    spec = load(standins, meta=1, db=2, version="1.2.7")  # uniform picker: 4 shards each, always
    (meta,) = start_meta(standins, spec)
    wrong = f"{spec.ceresdb.nodes[1].host}:{spec.ceresdb.nodes[1].grpc_port}"
    standins.run(spec, "db0")
    standins.run(spec, "db1", env={"CERESDB_SERVER_ADDR": wrong})  # the seed's "{ip}:8831" form
    wrong_name = f"{wrong}:{spec.ceresdb.nodes[1].grpc_port}"
    owners = scheduling.uniform_owners([endpoint(spec, 0), wrong_name], 8)
    mine = {s: n for s, n in owners.items() if n == endpoint(spec, 0)}
    wait_until(lambda: shard_locks(client_url(spec)) == mine, 30, "db0's four shards locked")
    # Meta dials the wrong name to open the other four, and cannot.
    failed = f"dispatch open shard failed endpoint={wrong_name}".encode()
    wait_until(lambda: meta.logs().count(failed) >= 2, 20, "meta's failed OpenShard dispatches")
    # The topology is what nodes report open (db0's next heartbeat): the wrong name never enters it,
    # and the cluster stays in Prepare.
    wait_until(lambda: dict(node_shards(meta_http(spec))) == mine, 10, "db0's shards in meta's topology")
    assert shard_locks(client_url(spec)) == mine


def test_three_meta_members_not_all_started_exit_0_after_the_timeout(standins: StandIns) -> None:
    spec = load(standins, meta=3, db=2, extra="[meta.config]\netcd-start-timeout-ms = 3000\n")
    started = time.monotonic()
    container = standins.run(spec, "meta0")
    assert container.wait(timeout=30)["StatusCode"] == 0
    assert time.monotonic() - started >= 3
    assert b"fail to start etcd server" in container.logs()


@pytest.mark.parametrize(("edit", "why"), [
    pytest.param(lambda text: text + "\n[analytics]\nx = 1\n", "a misspelt top-level section", id="unknown-section"),
    pytest.param(lambda text: text.replace('type = "RocksDB"', 'type = "Local"'), 'WAL type "Local" (only from 2.1.0)',
                 id="wal-local"),
])
def test_config_errors_exit_101(standins: StandIns, edit: object, why: str) -> None:
    spec = load(standins, meta=1, db=1)
    node_config = standins.root / "config" / "db0" / "ceresdb.toml"
    container = standins.run(spec, "db0")
    container.wait(timeout=20)
    text = node_config.read_text()
    assert callable(edit)
    changed = edit(text)
    assert changed != text, why
    node_config.write_text(changed)
    container.start()
    assert container.wait(timeout=20)["StatusCode"] == 101, why
    assert b"Failed to parse config" in container.logs(stderr=True, stdout=False)


FAKE_SERVERSCHEMA = '''
import os
import random
from typing import NamedTuple

class Violation(NamedTuple):
    path: str
    kind: str
    message: str
    expected: str

def db_schema(version):
    assert isinstance(version, tuple), version
    return "db"

def meta_schema(version):
    assert isinstance(version, tuple), version
    return "meta"

def check(document, schema):
    kind, _, path = os.environ.get("FAKE_VIOLATION", "").partition(":")
    return [Violation(path, kind, "fake " + kind, "x")] if kind else []
'''


@pytest.mark.parametrize(("role", "violation", "code"), [
    ("db", "", 1),  # no violation: on to meta, which refuses the connection
    ("db", "type:server.http_port", 101),
    ("db", "missing:analytic.manifest.scan_timeout", 101),
    ("db", "unknown:analytics", 101),
    ("db", 'unknown:analytic."write_group_worker_num"', 1),  # unknown nested keys are ignored
    ("meta", "type:lease-sec", 2),
    ("meta", "unknown:no-such-key", 1),  # ignored: on to etcd, which this copy cannot start
    ("db-without-module", "", 1),
])
def test_serverschema_seam(tmp_path: Path, role: str, violation: str, code: int) -> None:
    """The stand-ins parse with ceres_supervisor/desired/serverschema.py when the image carries it."""
    image = tmp_path / "image"
    shutil.copytree(HERE / "image", image)
    (image / "VERSION").write_text("1.2.2\n")
    if role != "db-without-module":
        (image / "serverschema.py").write_text(FAKE_SERVERSCHEMA)
    (closed_port,) = free_ports(1)
    config = tmp_path / "server.toml"
    if role == "meta":
        config.write_text(f'data-dir = "{tmp_path}/meta"\n')
    else:
        config.write_text('[cluster_deployment]\nmode = "WithMeta"\n[cluster_deployment.meta_client]\n'
                          f'cluster_name = "c"\nmeta_addr = "http://127.0.0.1:{closed_port}"\n'
                          '[analytic.wal]\ntype = "RocksDB"\n')
    script = image / ("meta.py" if role == "meta" else "db.py")
    env = {"PATH": "/nonexistent", "FAKE_VIOLATION": violation}
    result = subprocess.run([sys.executable, str(script), "--config", str(config)], env=env,
                            capture_output=True, timeout=30, check=False)
    assert result.returncode == code, (result.stdout[-500:], result.stderr[-800:])


def test_build_is_idempotent_and_images_start(docker_client: docker.DockerClient, standins: StandIns) -> None:
    time.monotonic()
    result = subprocess.run([sys.executable, "testkit/emulator.py", "1.2.2"], capture_output=True, text=True, check=True,
                            env={**os.environ, "CERES_EMULATOR_REPOSITORY": IMAGE_PREFIX})
    assert "up to date" in result.stderr  # nothing rebuilt (how fast is not a test's business)
    image = docker_client.images.get(build.image_names("1.2.2")["db"])
    # ceres_supervisor/desired/serverschema.py rides along when it exists, and only then.
    has_schema = docker_client.containers.run(
        image, entrypoint=["/usr/bin/python3", "-c", "import os; print(os.path.exists('/opt/ceres-emulator/serverschema.py'))"],
        labels={TEST_LABEL: standins.run_id}, remove=True)
    assert has_schema.strip() == str(build.SERVERSCHEMA.is_file()).encode()
    spec = load(standins, meta=1, db=1)
    start_meta(standins, spec)
    standins.run(spec, "db0")  # answers once meta is ready (how fast: bench/coldstart.py measures it)
    wait_until(lambda: http_json(f"{db_http(spec, 0)}/")[0] == 200, 10, "db0 answering", interval_s=0.02)


def test_grpc_port_answers_open_with_opened_and_failed(standins: StandIns) -> None:
    """The private OpenShard line: the node reports which shards it opened and which failed."""
    spec = load(standins, meta=1, db=1)
    start_meta(standins, spec)
    standins.run(spec, "db0")
    wait_until(lambda: http_json(f"{db_http(spec, 0)}/")[0] == 200, 20, "db0 answering")
    wait_until(lambda: len(shard_locks(client_url(spec))) == 8, 60, "db0 holding every shard")
    key = f"/ceresdb/defaultCluster/shards/{99:020d}"
    # A lock that exists (here a foreign one) fails the open; a held one is "already granted".
    _status, granted = http_json(f"{client_url(spec)}/v3/lease/grant", {"TTL": "60"})
    http_json(f"{client_url(spec)}/v3/kv/put", {"key": base64.b64encode(key.encode()).decode(),
                                                "value": base64.b64encode(b"\x0a\x01x").decode(), "lease": granted["ID"]})  # type: ignore[index]
    node = spec.ceresdb.nodes[0]
    with socket.create_connection((node.host, node.grpc_port), timeout=5) as conn:
        conn.sendall(b"OPEN [0, 99]\n")
        answer = conn.makefile("rb").readline()
    assert b'"opened": [0]' in answer and b'"99": "fail to acquire shard lock' in answer, answer
