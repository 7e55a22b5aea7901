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
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import docker
import pytest
from docker.models.containers import Container

from ceres_supervisor.desired import files, rendering, secrets
from ceres_supervisor.model.spec import DesiredState
from testkit import emulator as build
from testkit.helpers import (
    TEST_LABEL,
    decode_member,
    etcd_member_status,
    etcd_range,
    free_ports,
    http_json,
    meta_leader,
    meta_leader_key,
    node_shards,
    save_logs,
    shard_lock_leases,
    shard_locks,
    wait_until,
)
from testkit.standins import StandIns, cluster_toml, emulator_hook, kill_main_process, set_scheduler_tick
from tests.conftest import failed

HERE = Path(__file__).resolve().parent
IMAGE_PREFIX = build.REPOSITORY
TICK_S = 0.5
"""Meta's scheduler tick in these tests (the real one: 5 s)."""
LEASE = "3s"
"""CeresDB's meta_client.lease in these tests: a heartbeat every 2 s (the default 10 s: 6.7 s)."""


def _load_image_module(name: str) -> ModuleType:
    """One of the stand-ins' pure modules, to compare with what the containers did. Loaded under
    its own name (`emulator_<name>`); its image-side imports (etcdv3) are loaded the same way."""
    spec = importlib.util.spec_from_file_location(f"emulator_{name}", HERE / "image" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    saved = sys.modules.get("etcdv3")
    sys.modules["etcdv3"] = etcdv3 if name != "etcdv3" else module
    try:
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            sys.modules.pop("etcdv3", None)
        else:
            sys.modules["etcdv3"] = saved
    return module


etcdv3 = _load_image_module("etcdv3")
scheduling = _load_image_module("scheduling")
metastore = _load_image_module("metastore")
BUILT: set[str] = set()
"""Versions whose images this process made sure of: the session fixture builds only
CERES_EMULATOR_VERSIONS; the tests of 1.2.4 and 1.2.5 build theirs (0.2 s when up to date)."""


def ensure_images(version: str) -> None:
    if version not in BUILT:
        build.main([version])
        BUILT.add(version)


@pytest.fixture
def standins(
    docker_client: docker.DockerClient, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[StandIns]:
    runner = StandIns(docker_client, tmp_path)
    try:
        yield runner
    finally:
        if failed(request):  # the containers' logs (and etcd's) to read: tests/artifacts/<test>/
            containers = docker_client.containers.list(
                all=True, filters={"label": f"{TEST_LABEL}={runner.run_id}"}
            )
            save_logs(request.node.name, containers, tmp_path.glob("data/*/etcd.log"))
        runner.cleanup()


def load(
    standins: StandIns, meta: int = 1, db: int = 2, version: str = "1.2.2", extra: str = ""
) -> DesiredState:
    ensure_images(version)
    text = cluster_toml(meta=meta, db=db, version=version, extra=extra, image_prefix=IMAGE_PREFIX)
    return standins.load(text.replace("shard_lock_ttl = 15\n", f'shard_lock_ttl = 15\nlease = "{LEASE}"\n'))


def with_meta_addr(standins: StandIns, spec: DesiredState, i: int) -> DesiredState:
    """The same cluster with every CeresDB node's `meta_addr` on meta member `i`."""
    text = (standins.root / "cluster.toml").read_text()
    return standins.load(text.replace("[ceresdb]\n", f'[ceresdb]\nmeta_addr = "{client_url(spec, i)}"\n', 1))


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
    wait_until(
        lambda: cluster_view(spec)[1] == "Stable", 20, "the cluster view Stable"
    )  # one tick after Prepare
    return locks


def cluster_view(spec: DesiredState, i: int = 0) -> tuple[int, str, list[tuple[int, str]]]:
    """(version, state, shard nodes) of cluster 0's latest view, as meta stored it in etcd."""
    prefix = f"{root(spec)}/v1/cluster/{0:020d}/cluster_view/"
    rows = etcd_range(client_url(spec, i), prefix)
    latest = rows.get(prefix + "latest_version")
    if latest is None:
        return -1, "", []
    return metastore.decode_cluster_view(rows[prefix + latest[0].decode()][0])  # type: ignore[no-any-return]


def busiest(spec: DesiredState, locks: dict[int, str]) -> int:
    """The CeresDB node holding the most shards (at least 4 of 8 with two nodes)."""
    return max(
        range(len(spec.ceresdb.nodes)), key=lambda i: sum(h == endpoint(spec, i) for h in locks.values())
    )


# --- the cluster, and the scheduler's pace per version (reference 2.3, 2.5) -----------------------


@pytest.mark.parametrize("meta_count", [1, 3])
def test_cluster_forms(standins: StandIns, meta_count: int) -> None:
    spec = load(standins, meta=meta_count, db=2, version="1.2.5")  # every shard at once (1.2.2: one a tick)
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
    # metadata.ShardInfo gained Status at 1.2.5 (meta v1.2.5 server/cluster/metadata/types.go:37-44)
    assert all(set(s["ShardInfo"]) == {"ID", "Role", "Version", "Status"} for s in shards)
    for i in range(len(spec.ceresdb.nodes)):
        assert http_json(f"{db_http(spec, i)}/") == (200, {"status": "ok"})


@pytest.mark.parametrize("version", ["1.2.2", "1.2.4", "1.2.5", "1.2.7"])
def test_first_assignment_uses_the_version_picker_and_pace(standins: StandIns, version: str) -> None:
    """1.2.2: one shard per tick, on the node its crc32 ring picks; from 1.2.4 all at once in a batch
    (crc32 picks at 1.2.4, the uniformity hash at 1.2.5, the bounded-load hash at 1.2.7)."""
    spec = load(standins, db=2, version=version)
    (meta,) = start_meta(standins, spec)
    _status, clusters = http_json(f"{meta_http(spec)}/api/v1/clusters")
    # procedure-executing-batch-size and the record's field arrive with batching (1.2.4).
    assert ("ProcedureExecutingBatchSize" in clusters["data"][0]) == (version >= "1.2.4"), clusters  # type: ignore[index]
    start_db(standins, spec)
    first_seen: dict[int, float] = {}

    def eight_seen() -> bool:
        now = time.monotonic()
        for shard in shard_locks(client_url(spec)):
            first_seen.setdefault(shard, now)
        return len(first_seen) == 8

    wait_until(eight_seen, 60, "eight shard locks", interval_s=0.05)
    names = [endpoint(spec, 0), endpoint(spec, 1)]
    if version <= "1.2.4":
        expected = {s: scheduling.crc32_ring_owner(names, s) for s in range(8)}
    elif version < "1.2.7":
        expected = scheduling.uniformity_owners(names, 8)
    else:
        expected = scheduling.uniform_owners(names, 8)
    assert shard_locks(client_url(spec)) == expected
    submitted = meta.logs().count(b"scheduler submit new procedure")
    if version == "1.2.2":
        assert submitted >= 8, "one procedure per shard, one per tick"
    else:
        # Every shard picked in the first batch (a loaded machine may fail an open and retry it at the
        # next tick: a later batch, as in the real server, which is not what this checks).
        first = next(line for line in meta.logs().splitlines() if b"Reason=Cluster initialization" in line)
        picked = [
            s for group in re.findall(rb"\[([0-9, ]*)\]", first) for s in group.split(b",") if s.strip()
        ]
        assert len(picked) == 8, f"every shard in one batch: {first!r}"


@pytest.mark.parametrize("version", ["1.2.2", "1.2.7"])
def test_restarted_at_once_a_node_waits_out_its_old_locks_then_reopens_at_the_version_pace(
    standins: StandIns, version: str
) -> None:
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


@pytest.mark.parametrize("version", ["1.2.7", "2.0.0"])
def test_an_offline_assigned_node_stops_every_reopen_until_2_0_0(standins: StandIns, version: str) -> None:
    """The last 1.x against 2.0.0; the rule of every version is checked on a fixed topology by
    test_scheduler_rules_per_version, so 1.2.2 (the same rule) costs no cluster here."""
    spec = load(standins, db=2, version=version)
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
    wait_until(
        lambda: not set(shard_locks(client_url(spec), root=root(spec)).values()) & held,
        25,
        "both nodes' locks to expire",
    )
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
    wait_until(
        lambda: shard_locks(client_url(spec), root=root(spec)) or None,
        15,
        "a shard reopened once every assigned node is online",
    )


def test_scheduler_rules_per_version() -> None:
    """The pure rules behind the tests above, on a fixed topology: A owns 0 and 2, B owns 1 and 3,
    in topology order 0 (A), 1 (B), 2 (A), 3 (B)."""
    view = scheduling.View(scheduling.STABLE, 5, [(0, "A"), (1, "B"), (2, "A"), (3, "B")])
    rng = random.Random(0)
    now = 100.0
    online, offline = 99.0, 80.0

    def run(
        version: tuple[int, int, int],
        a: tuple[float, tuple[int, ...]],
        b: tuple[float, tuple[int, ...]] | None,
    ) -> object:
        registered = {"A": scheduling.Registered(*a)}
        if b is not None:
            registered["B"] = scheduling.Registered(*b)
        result = scheduling.static_schedule(version, view, 4, registered, now, rng)
        return result.opens if result.error is None else "abort"

    # A restarted (reports nothing), B fine: 1.2.2 one shard, later versions all of A's.
    assert run((1, 2, 2), (online, ()), (online, (1, 3))) == [(0, "A")]
    assert run((1, 2, 4), (online, ()), (online, (1, 3))) == [(0, "A"), (2, "A")]  # batches from 1.2.4
    assert run((1, 2, 7), (online, ()), (online, (1, 3))) == [(0, "A"), (2, "A")]
    # A reported 0 PartialOpen (1.2.5+): the static scheduler counts it reported, the reopen one
    # (from 1.2.5, Stable only) opens it again.
    partial = {"A": scheduling.Registered(online, (0, 2), (0,)), "B": scheduling.Registered(online, (1, 3))}
    assert scheduling.static_schedule((1, 2, 5), view, 4, partial, now, rng).opens == []
    assert scheduling.reopen_schedule((1, 2, 5), view, partial, now, ["B", "A"]).opens == [(0, "A")]
    assert scheduling.reopen_schedule((1, 2, 4), view, partial, now, ["B", "A"]).opens == []
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


@pytest.mark.parametrize(
    ("version", "health", "root_path"),
    [("1.2.7", "/api/v1/health", "/ceresdb"), ("2.0.0", "/api/v1/health", "/horaedb")],
)
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
def test_leader_key_is_a_protobuf_member_under_a_lease(
    standins: StandIns, version: str, meta_count: int
) -> None:
    spec = load(standins, meta=meta_count, db=1, version=version)
    start_meta(standins, spec)
    key = meta_leader_key(version, root(spec))
    other_key = f"{root(spec)}/members/leader" if key == "/members/leader" else "/members/leader"
    assert etcd_range(client_url(spec), other_key) == {}
    (value, lease) = etcd_range(client_url(spec), key)[key]
    found = meta_leader(client_url(spec), key)
    assert found is not None
    (name, ident, leader_endpoint), _lease = found
    i = next(
        j for j in range(meta_count) if client_url(spec, j) == leader_endpoint
    )  # first advertise-client-url
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
    assert value == (
        b"\x0a"
        + bytes([len(name)])
        + name.encode()
        + b"\x10"
        + bytes(varint)
        + b"\x1a"
        + bytes([len(leader_endpoint)])
        + leader_endpoint.encode()
    )
    _status, ttl = http_json(f"{client_url(spec)}/v3/lease/timetolive", {"ID": str(lease)})
    assert int(ttl["grantedTTL"]) == 10 and 0 < int(ttl["TTL"]) <= 10, ttl  # type: ignore[index]  # lease-sec


@pytest.mark.parametrize("version", ["1.2.2", "1.2.7"])
def test_a_follower_sharing_the_machine_forwards_to_itself_until_the_caller_gives_up(
    standins: StandIns, version: str
) -> None:
    spec = load(standins, meta=3, db=1, version=version)
    containers = start_meta(standins, spec)
    leader = wait_leader(spec)
    follower = (leader + 1) % 3
    for i in range(3):  # the health route is answered locally, never forwarded
        assert http_json(f"{meta_http(spec, i)}{health_path(version)}") == (200, {"status": "success"})
    status, body = http_json(f"{meta_http(spec, leader)}/api/v1/clusters")
    assert status == 200 and [c["Name"] for c in body["data"]] == ["defaultCluster"]  # type: ignore[index]
    status, _ = http_json(
        f"{meta_http(spec, leader)}/api/v1/getNodeShards", {"clusterName": "defaultCluster"}
    )
    assert status == 200
    # <leader's advertise host>:<the follower's own port> is the follower itself: no answer, ever.
    with pytest.raises(TimeoutError):
        http_json(f"{meta_http(spec, follower)}/api/v1/clusters", timeout_s=3)
    with pytest.raises(TimeoutError):
        http_json(
            f"{meta_http(spec, follower)}/api/v1/getNodeShards",
            {"clusterName": "defaultCluster"},
            timeout_s=2,
        )
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
    wait_until(
        lambda: endpoint(spec, victim) not in shard_locks(client_url(spec)).values(),
        25,
        "the locks to expire",
    )
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
        assert http_json(f"{db_http(spec, 0)}/debug/flush_memtable", {}) == (
            200,
            {"success": [], "failed": []},
        )
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
    failed = b"procedure start failed procedureID="
    wait_until(
        lambda: (
            sum(f"node={wrong_name} ".encode() in line for line in meta.logs().splitlines() if failed in line)
            >= 2
        ),
        20,
        "meta's failed OpenShard procedures",
    )
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


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        pytest.param(
            lambda text: text + "\n[analytics]\nx = 1\n", "a misspelt top-level section", id="unknown-section"
        ),
        pytest.param(
            lambda text: text.replace('type = "RocksDB"', 'type = "Local"'),
            'WAL type "Local" (only from 2.1.0)',
            id="wal-local",
        ),
    ],
)
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


FAKE_SERVERSCHEMA = """
import os
import random
import re
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
"""


@pytest.mark.parametrize(
    ("role", "violation", "code"),
    [
        ("db", "", 1),  # no violation: on to meta, which refuses the connection
        ("db", "type:server.http_port", 101),
        ("db", "missing:analytic.manifest.scan_timeout", 101),
        ("db", "unknown:analytics", 101),
        ("db", 'unknown:analytic."write_group_worker_num"', 1),  # unknown nested keys are ignored
        ("meta", "type:lease-sec", 2),
        ("meta", "unknown:no-such-key", 1),  # ignored: on to etcd, which this copy cannot start
        ("db-without-module", "", 1),
    ],
)
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
        config.write_text(
            '[cluster_deployment]\nmode = "WithMeta"\n[cluster_deployment.meta_client]\n'
            f'cluster_name = "c"\nmeta_addr = "http://127.0.0.1:{closed_port}"\n'
            '[analytic.wal]\ntype = "RocksDB"\n'
        )
    script = image / ("meta.py" if role == "meta" else "db.py")
    env = {"PATH": "/nonexistent", "FAKE_VIOLATION": violation}
    result = subprocess.run(
        [sys.executable, str(script), "--config", str(config)],
        env=env,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == code, (result.stdout[-500:], result.stderr[-800:])


def test_build_is_idempotent_and_images_start(docker_client: docker.DockerClient, standins: StandIns) -> None:
    time.monotonic()
    result = subprocess.run(
        [sys.executable, "testkit/emulator.py", "1.2.2"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "CERES_EMULATOR_REPOSITORY": IMAGE_PREFIX},
    )
    assert "up to date" in result.stderr  # nothing rebuilt (how fast is not a test's business)
    image = docker_client.images.get(build.image_names("1.2.2")["db"])
    # ceres_supervisor/desired/serverschema.py rides along when it exists, and only then.
    has_schema = docker_client.containers.run(
        image,
        entrypoint=[
            "/usr/bin/python3",
            "-c",
            "import os; print(os.path.exists('/opt/ceres-emulator/serverschema.py'))",
        ],
        labels={TEST_LABEL: standins.run_id},
        remove=True,
    )
    assert has_schema.strip() == str(build.SERVERSCHEMA.is_file()).encode()
    spec = load(standins, meta=1, db=1)
    start_meta(standins, spec)
    standins.run(spec, "db0")  # answers once meta is ready (how fast: bench/coldstart.py measures it)
    wait_until(lambda: http_json(f"{db_http(spec, 0)}/")[0] == 200, 10, "db0 answering", interval_s=0.02)


def test_grpc_port_answers_open_shard_one_shard_per_call(standins: StandIns) -> None:
    """The private OpenShard line (one shard per call, as meta sends one RPC per shard): a lock that
    exists fails the call; a held one is "already granted" and succeeds."""
    spec = load(standins, meta=1, db=1)
    start_meta(standins, spec)
    standins.run(spec, "db0")
    wait_until(lambda: len(shard_locks(client_url(spec))) == 8, 60, "db0 holding every shard")
    key = f"/ceresdb/defaultCluster/shards/{99:020d}"
    _status, granted = http_json(f"{client_url(spec)}/v3/lease/grant", {"TTL": "60"})
    http_json(
        f"{client_url(spec)}/v3/kv/put",
        {
            "key": base64.b64encode(key.encode()).decode(),
            "value": base64.b64encode(b"\x0a\x01x").decode(),
            "lease": granted["ID"],
        },
    )  # type: ignore[index]
    node = spec.ceresdb.nodes[0]

    def open_shard(shard: int) -> bytes:
        with socket.create_connection((node.host, node.grpc_port), timeout=5) as conn:
            conn.sendall(b'OPEN {"shard": {"id": %d, "role": "Leader", "version": 1}}\n' % shard)
            return conn.makefile("rb").readline()

    assert open_shard(0) == b'{"code": 0}\n'
    assert b'"code": 500' in open_shard(99) and b"fail to acquire shard lock" in open_shard(99)


# --- helpers of the failure tests -------------------------------------------------------------------


def revoke(spec: DesiredState, leases: set[int], i: int = 0) -> None:
    """Revoke etcd leases: their keys go at once, as when their TTL runs out (without the wait)."""
    for lease in leases:
        http_json(f"{client_url(spec, i)}/v3/lease/revoke", {"ID": str(lease)}, timeout_s=10)


def leases_of(spec: DesiredState, holder: str, i: int = 0) -> set[int]:
    return {
        lease for h, lease in shard_lock_leases(client_url(spec, i), root=root(spec)).values() if h == holder
    }


def log_count(container: Container, text: str) -> int:
    return container.logs().count(text.encode())


def run_log_count(container: Container, text: str) -> int:
    """How often `text` is in the logs of the container's current process: after the last line that
    every CeresDB start writes (Docker keeps the logs of every run of a container)."""
    return container.logs().rsplit(b"Build ceresdb with node meta info", 1)[-1].count(text.encode())


def wait_passes(meta: Container, passes: int) -> None:
    """Until meta's scheduler has made `passes` more passes (it logs each one)."""
    start = log_count(meta, "scheduler manager invoke")
    wait_until(
        lambda: log_count(meta, "scheduler manager invoke") >= start + passes,
        30,
        f"{passes} scheduler passes",
    )


def answering(spec: DesiredState, i: int) -> bool:
    try:
        return http_json(f"{db_http(spec, i)}/", timeout_s=1)[0] == 200
    except OSError:
        return False


def restart_with_locks_gone(
    spec: DesiredState,
    containers: list[Container],
    free: set[int],
    meta: Container,
    i: int = 0,
    resume: bool = True,
) -> None:
    """Kill the CeresDB containers, revoke the leases `free` (the old incarnations' locks that the test
    wants gone: as if their TTL had run out), start them again, and let meta's scheduler go once every
    one answers (a node answers after its first heartbeat went out): meta is held still (tick 3600)
    meanwhile, so that the first OpenShard meets the restarted processes."""
    set_scheduler_tick([meta], 3600)
    for container in containers:
        kill_main_process(container)
        container.wait(timeout=10)
    revoke(spec, free, i)
    for container in containers:
        container.start()
    for container in containers:
        index = next(
            j for j, n in enumerate(spec.ceresdb.nodes) if str(container.name).endswith(f"-{n.name}")
        )
        wait_until(lambda index=index: answering(spec, index), 20, f"{container.name} answering")  # type: ignore[misc]
    if resume:
        set_scheduler_tick([meta], TICK_S)


def debug_shards(spec: DesiredState, i: int) -> dict[int, str]:
    """{shard: status} from CeresDB's GET /debug/shards (1.2.5+)."""
    status, body = http_json(f"{db_http(spec, i)}/debug/shards")
    assert status == 200 and isinstance(body, list), body
    assert all(set(s) == {"id", "role", "version", "status"} and s["role"] == "Leader" for s in body), body
    return {int(s["id"]): str(s["status"]) for s in body}


def run_node(
    standins: StandIns,
    spec: DesiredState,
    name: str,
    image: str | None = None,
    env: dict[str, str] | None = None,
    edit: Callable[[str], str] | None = None,
    suffix: str = "",
) -> Container:
    """Like StandIns.run, with another image, an edited config, or a second container on the node's
    files (`suffix` names it)."""
    node = next(n for n in rendering.render(spec) if n.name == name)
    config_dir = standins.root / "config" / name
    files.write_node(config_dir, node, secrets.resolve)
    config = config_dir / node.config_name
    if edit is not None:
        config.write_text(edit(config.read_text()))
    data_dir = standins.root / "data" / name
    data_dir.mkdir(parents=True, exist_ok=True)
    default = spec.meta.image if node.role == "meta" else spec.ceresdb.image
    return standins.client.containers.run(
        image or default,
        detach=True,
        name=f"ceres-emutest-{standins.run_id}-{name}{suffix}",
        network_mode="host",
        environment={**node.env, **(env or {})},
        volumes={
            str(config): {"bind": node.config_mount, "mode": "ro"},
            str(data_dir): {"bind": node.data_mount, "mode": "rw"},
        },
        labels={TEST_LABEL: standins.run_id},
    )


# --- item 1: OpenShard fetches the shard's tables from meta -----------------------------------------


@pytest.mark.parametrize("version", ["1.2.2", "1.2.5", "2.0.0"])
def test_open_shard_fetches_tables_through_meta_addr_and_from_1_2_5_exits_1_when_it_cannot(
    standins: StandIns, version: str
) -> None:
    """The member named in meta_addr stops while the leader reopens a node's shards: the node takes
    each lock, then cannot fetch the shard's tables. Up to 1.2.4 that is the call's error (the node
    runs on, the lock held); from 1.2.5 it retries (10 x 5 s, 2.0.0: backoff 1-5 s; scaled down here)
    and exits 1, leaving its locks to their TTL."""
    spec = load(standins, meta=3, db=1, version=version)
    metas = start_meta(standins, spec)
    leader = wait_leader(spec)
    follower = (leader + 1) % 3
    spec = with_meta_addr(standins, spec, follower)
    db0 = standins.run(spec, "db0")
    wait_until(
        lambda: len(shard_locks(client_url(spec, leader), root=root(spec))) == 8,
        60,
        "db0 holding every shard",
    )
    wait_until(lambda: cluster_view(spec, leader)[1] == "Stable", 20, "the cluster Stable")
    emulator_hook(db0, "retry-scale", "0.02")
    mine = endpoint(spec, 0)
    node_key = f"{root(spec)}/v1/cluster/{0:020d}/node/{mine}"
    old = leases_of(spec, mine, leader)
    restart_with_locks_gone(spec, [db0], old, metas[leader], leader, resume=False)
    before = etcd_range(client_url(spec, leader), node_key)[node_key][0]
    wait_until(
        lambda: etcd_range(client_url(spec, leader), node_key)[node_key][0] != before,
        10,
        "db0's next heartbeat",
    )
    kill_main_process(metas[follower])  # the member db0's meta_addr names
    set_scheduler_tick([metas[leader]], TICK_S)  # within 10 s of that heartbeat: db0 is online for meta
    if version >= "1.2.5":
        assert db0.wait(timeout=60)["StatusCode"] == 1
        logs = db0.logs()
        assert b"Open shard failed and we have to panic otherwise this shard wont be assigned again." in logs
        assert (
            max(logs.count(f"Open shard failed id={s} ".encode()) for s in range(8)) == 11
        )  # 1 try + 10 retries
        left = shard_lock_leases(client_url(spec, leader), root=root(spec))
        assert (
            left
            and {h for h, _ in left.values()} == {mine}
            and not {lease for _, lease in left.values()} & old
        ), left
    else:
        wait_until(lambda: log_count(db0, "fail to open shards in cluster") >= 2, 30, "db0's failed fetches")
        db0.reload()
        assert db0.status == "running"
        assert set(shard_locks(client_url(spec, leader), root=root(spec)).values()) == {
            mine
        }  # the locks it took stay


# --- item 2: the procedure manager --------------------------------------------------------------------


def test_from_1_2_4_a_batch_holds_its_shards_until_every_open_returns(standins: StandIns) -> None:
    """A and B restart together; A's first shard opens slowly (held), B's old locks still exist. From
    1.2.4 the first batch holds every shard in it until A's slow open returns, so B's shards, whose
    opens failed on their old locks, wait behind it even once those locks are gone (later batches are
    requeued every 500 ms). (At 1.2.2 each shard is its own procedure, one per tick: see
    test_restarted_at_once_a_node_waits_out_its_old_locks_then_reopens_at_the_version_pace.)"""
    spec = load(standins, db=2, version="1.2.7")
    (meta,) = start_meta(standins, spec)
    containers = start_db(standins, spec)
    all_shards_locked(spec)
    topology = node_shards(meta_http(spec))
    a = next(i for i in range(2) if endpoint(spec, i) == topology[0][1])
    b = 1 - a
    slow = topology[0][0]
    b_shards = sorted(s for s, n in topology if n == endpoint(spec, b))
    a_c, b_c = containers[spec.ceresdb.nodes[a].name], containers[spec.ceresdb.nodes[b].name]
    b_old = leases_of(spec, endpoint(spec, b))
    emulator_hook(a_c, "open-slow", str(slow), "hold")
    finished = log_count(a_c, f"Open shard finish shard_id={slow} ")
    started = log_count(a_c, f"Receive open shard request shard_id={slow} ")
    restart_with_locks_gone(spec, [a_c, b_c], leases_of(spec, endpoint(spec, a)), meta)
    wait_until(
        lambda: log_count(a_c, f"Receive open shard request shard_id={slow} ") > started,
        20,
        "A's slow open started",
    )
    wait_until(
        lambda: log_count(b_c, "Failed to execute txn of create lock") >= 1,
        20,
        "B's opens failing on its old locks",
    )
    revoke(spec, b_old)

    def b_locked() -> list[int]:
        return sorted(s for s, h in shard_locks(client_url(spec)).items() if h == endpoint(spec, b))

    wait_passes(meta, 6)
    assert b_locked() == [], "a later batch ran while the first one still held its shards"
    # Meanwhile A reports the shard it is still opening PartialOpen (from 1.2.5), which meta's
    # diagnosis (from 1.2.7) shows; B's shards, reported by nobody, are unregistered.
    assert debug_shards(spec, a)[slow] == "Opening"
    status, body = http_json(f"{meta_http(spec)}/debug/diagnose/defaultCluster/shards")
    assert status == 200 and body["data"] == {  # type: ignore[index]
        "unregistered_shards": b_shards,
        "unready_shards": {str(slow): {"node_name": endpoint(spec, a), "status": "partialOpen"}},
    }, body
    assert log_count(a_c, f"Open shard finish shard_id={slow} ") == finished  # A's open has not returned
    emulator_hook(a_c, "open-clear")
    wait_until(lambda: b_locked() == b_shards, 20, "B's shards reopened once A's open returned")


# --- item 3: 2.0.0's enable_shard_lock_fast_reacquire ------------------------------------------------


def turn_on_fast_reacquire(config: str) -> str:
    assert "enable_shard_lock_fast_reacquire = false" in config
    return config.replace(
        "enable_shard_lock_fast_reacquire = false", "enable_shard_lock_fast_reacquire = true"
    )


def test_2_0_0_fast_reacquire_reuses_the_predecessors_lease(standins: StandIns) -> None:
    """The supervisor renders the setting false and refuses it in `config` tables (README); this is
    what the server does with it turned on."""
    spec = load(standins, meta=1, db=1, version="2.0.0")
    start_meta(standins, spec)
    db0 = standins.run(spec, "db0", edit=turn_on_fast_reacquire)
    old = wait_until(
        lambda: (
            (leases := shard_lock_leases(client_url(spec), root=root(spec))) and len(leases) == 8 and leases
        ),
        60,
        "db0 holding every shard",
    )
    kill_main_process(db0)
    db0.wait(timeout=10)
    db0.start()
    wait_until(
        lambda: (
            answering(spec, 0)
            and set(debug_shards(spec, 0).values()) == {"Ready"}
            and len(debug_shards(spec, 0)) == 8
        ),
        30,
        "db0's shards open again",
    )
    assert log_count(db0, "Shard lock is acquired fast") == 8
    assert (
        shard_lock_leases(client_url(spec), root=root(spec)) == old
    )  # the same lease ids: the predecessor's


# --- item 4: a held lock is not a served shard -------------------------------------------------------


@pytest.mark.parametrize("version", ["1.2.4", "1.2.5"])
def test_a_failed_table_open_keeps_the_lock_and_only_from_1_2_5_is_retried(
    standins: StandIns, version: str
) -> None:
    spec = load(standins, meta=1, db=1, version=version)
    (meta,) = start_meta(standins, spec)
    db0 = standins.run(spec, "db0")
    all_shards_locked(spec)
    emulator_hook(db0, "open-fail", "3")
    restart_with_locks_gone(spec, [db0], leases_of(spec, endpoint(spec, 0)), meta)
    wait_until(lambda: len(shard_locks(client_url(spec))) == 8, 60, "every lock taken again")
    wait_until(
        lambda: log_count(db0, "Failed to open shard shard_id=3 ") >= 1, 20, "shard 3's tables failing"
    )
    wait_passes(meta, 6)  # heartbeats (every 2 s here) report what the node holds
    requests = log_count(db0, "Receive open shard request shard_id=3 ")
    wait_passes(meta, 6)
    assert shard_locks(client_url(spec))[3] == endpoint(spec, 0)
    if version < "1.2.5":
        # The shard is in the node's cache before its tables open: reported open, never reopened
        # (the same at 1.2.2, whose reopening is one shard per tick: slower to show).
        assert log_count(db0, "Receive open shard request shard_id=3 ") == requests
        return
    assert log_count(db0, "Receive open shard request shard_id=3 ") > requests  # meta's reopen scheduler
    statuses = debug_shards(spec, 0)
    assert statuses.pop(3) in ("Init", "Opening") and set(statuses.values()) == {"Ready"}, statuses
    emulator_hook(db0, "open-clear")
    wait_until(lambda: debug_shards(spec, 0).get(3) == "Ready", 20, "shard 3 open once its tables open")


# --- item 5: the default schema, through meta's leader, at every start -------------------------------


def test_ceresdb_start_creates_the_default_schema_through_the_meta_leader(standins: StandIns) -> None:
    spec = load(standins, meta=3, db=1)
    metas = start_meta(standins, spec)
    leader = wait_leader(spec)
    follower = (leader + 1) % 3
    spec = with_meta_addr(standins, spec, follower)
    db0 = standins.run(spec, "db0")
    wait_until(lambda: answering(spec, 0), 20, "db0 answering")
    schemas = etcd_range(client_url(spec, follower), f"/ceresdb/v1/cluster/{0:020d}/schema/info/")
    assert [metastore.decode(v)[3] for v, _ in schemas.values()] == [[b"public"]]
    db0.stop(timeout=10)
    kill_main_process(metas[leader])  # its leader key outlives it by up to lease-sec (10 s)
    metas[leader].wait(timeout=10)
    # Read once the survivors have elected an etcd leader (a read during the election fails).
    found = wait_until(
        lambda: meta_leader(client_url(spec, follower), "/members/leader"), 15, "the leader key read"
    )
    assert found[0][2] == client_url(spec, leader), found  # still the dead leader's
    db0.start()  # AllocSchemaID reaches meta_addr, which forwards it to the dead leader
    assert db0.wait(timeout=30)["StatusCode"] == 1
    assert b"Fail to create default schema" in db0.logs()


# --- item 6: one process per data directory -----------------------------------------------------------


def test_ceresdb_data_directory_is_locked_like_rocksdb_does(standins: StandIns) -> None:
    spec = load(standins, meta=1, db=1)
    start_meta(standins, spec)
    db0 = standins.run(spec, "db0")
    wait_until(lambda: answering(spec, 0), 20, "db0 answering")
    wal = standins.root / "data" / "db0" / "wal"
    for name in ("wal", "manifest"):
        assert {"LOCK", "IDENTITY", "CURRENT", "LOG"} <= {p.name for p in (wal / name).iterdir()}, name
    second = run_node(standins, spec, "db0", suffix="-second")  # the same files, while db0 runs
    assert second.wait(timeout=30)["StatusCode"] == 1
    logs = second.logs()
    assert b"Failed to setup analytic engine" in logs and b"While lock file: " in logs and b"/LOCK: " in logs
    db0.stop(timeout=10)
    assert db0.wait(timeout=10)["StatusCode"] == 0
    second.start()  # the lock went with the process that held it
    wait_until(lambda: answering(spec, 0), 20, "the second container answering")


# --- item 7: stops ---------------------------------------------------------------------------------------


def test_ceresdb_sigterm_during_startup_ends_it_by_the_signal_and_later_stops_wait_for_open_shard(
    standins: StandIns,
) -> None:
    spec = load(standins, meta=1, db=1, version="1.2.7")
    (meta,) = start_meta(standins, spec)
    db0 = standins.run(spec, "db0")
    all_shards_locked(spec)
    emulator_hook(db0, "start-slow", "60")  # the next start recovers its WAL for 60 s
    db0.stop(timeout=10)
    assert db0.wait(timeout=10)["StatusCode"] == 0  # started: a graceful stop
    db0.start()
    wait_until(lambda: log_count(db0, "recovering wal") == 1, 10, "db0 opening its WAL")
    db0.kill(signal="SIGTERM")  # no handler yet: the signal ends it
    assert db0.wait(timeout=10)["StatusCode"] == 143
    db0.start()
    wait_until(lambda: log_count(db0, "recovering wal") == 2, 10, "db0 opening its WAL again")
    emulator_hook(db0, "start-slow", "0")
    emulator_hook(db0, "open-slow", "0", "hold")
    restart_with_locks_gone(spec, [db0], leases_of(spec, endpoint(spec, 0)), meta, resume=False)
    set_scheduler_tick([meta], TICK_S)
    # Counted in this process's logs: a procedure queued before the restart (meta never filters
    # duplicates) may reach it before the scheduler goes again, and then holds shard 0.
    wait_until(
        lambda: run_log_count(db0, "Receive open shard request shard_id=0 ") >= 1, 20, "shard 0 opening"
    )
    db0.stop(timeout=2)  # the gRPC shutdown waits for the OpenShard in flight, which never returns
    assert db0.wait(timeout=10)["StatusCode"] == 137
    assert b"Received signal, stopping server..." in db0.logs()
    assert endpoint(spec, 0) in shard_locks(client_url(spec)).values()  # nothing released


def test_meta_leader_revokes_its_lease_on_sigterm_and_exits_0(standins: StandIns) -> None:
    spec = load(standins, meta=3, db=1)
    metas = start_meta(standins, spec)
    leader = wait_leader(spec)
    other = (leader + 1) % 3
    found = meta_leader(client_url(spec, other), "/members/leader")
    assert found is not None
    _member, lease = found
    metas[leader].stop(timeout=10)
    assert metas[leader].wait(timeout=10)["StatusCode"] == 0
    # Revoked, not left to expire: the lease is gone the moment the process is.
    _status, ttl = http_json(
        f"{client_url(spec, other)}/v3/lease/timetolive", {"ID": str(lease)}, timeout_s=10
    )
    assert int(ttl.get("TTL", -1)) == -1, ttl  # type: ignore[union-attr]
    assert b"got signal to exit" in metas[leader].logs()


# --- item 8: flush_memtable is synchronous --------------------------------------------------------------


def test_flush_memtable_answers_only_when_every_table_is_flushed(standins: StandIns) -> None:
    spec = load(standins, meta=1, db=1)
    start_meta(standins, spec)
    db0 = standins.run(spec, "db0")
    wait_until(lambda: answering(spec, 0), 20, "db0 answering")
    emulator_hook(db0, "flush-slow", "60")
    with pytest.raises(TimeoutError):
        http_json(f"{db_http(spec, 0)}/debug/flush_memtable", {}, timeout_s=2)
    assert log_count(db0, "flush memtable") == 0  # still flushing
    emulator_hook(db0, "flush-slow", "0")
    wait_until(lambda: log_count(db0, "flush memtable") == 1, 10, "the flush finished")
    assert http_json(f"{db_http(spec, 0)}/debug/flush_memtable", {}) == (200, {"success": [], "failed": []})


# --- item 10: parsing ------------------------------------------------------------------------------------


def run_meta_script(
    tmp_path: Path, config: Path, version: str = "1.2.7"
) -> subprocess.CompletedProcess[bytes]:
    image = tmp_path / "image"
    if not image.exists():
        shutil.copytree(HERE / "image", image)
    (image / "VERSION").write_text(f"{version}\n")
    (image / "serverschema.py").unlink(missing_ok=True)
    return subprocess.run(
        [sys.executable, str(image / "meta.py"), "--config", str(config)],
        env={"PATH": "/nonexistent"},
        capture_output=True,
        timeout=30,
        check=False,
    )


def test_meta_exits_2_when_its_config_file_cannot_be_read(tmp_path: Path) -> None:
    result = run_meta_script(tmp_path, tmp_path / "missing.toml")
    assert result.returncode == 2, result.stderr
    assert b"panic: fail to parse config from toml file, err:read config file" in result.stderr


def test_meta_keys_match_case_insensitively_like_go_toml_v2(tmp_path: Path) -> None:
    config = tmp_path / "meta.toml"
    config.write_text(f'STORAGE-ROOT-PATH = "/moved"\nNode-Name = "m9"\ndata-dir = "{tmp_path}/d"\n')
    result = run_meta_script(tmp_path, config)
    assert b"node-name=m9" in result.stdout and b"storage-root-path=/moved" in result.stdout, result.stdout
    config.write_text(
        f'storage-root-path = "/first"\nSTORAGE-ROOT-PATH = "/second"\ndata-dir = "{tmp_path}/d"\n'
    )
    assert b"storage-root-path=/second" in run_meta_script(tmp_path, config).stdout  # the later key wins


def test_ceresdb_applies_empty_environment_overrides(standins: StandIns) -> None:
    spec = load(standins, meta=1, db=1)
    start_meta(standins, spec)
    db0 = standins.run(spec, "db0", env={"CLUSTER_NAME": ""})
    assert db0.wait(timeout=20)["StatusCode"] == 1
    assert b"cluster_name is required non-empty" in db0.logs()
    db0.remove(force=True)
    standins.run(spec, "db0", env={"CERESDB_SERVER_ADDR": ""})  # the node's name: ":<grpc_port>"
    port = spec.ceresdb.nodes[0].grpc_port
    wait_until(
        lambda: set(shard_locks(client_url(spec)).values()) == {f":{port}"},
        60,
        "locks named by the empty address",
    )


# --- stand-in needs of the other issues ------------------------------------------------------------------


def test_meta_http500_hook_fails_routes_with_the_real_envelope(standins: StandIns) -> None:
    spec = load(standins, meta=1, db=1)
    (meta,) = start_meta(standins, spec)
    shards_url, clusters_url = f"{meta_http(spec)}/api/v1/getNodeShards", f"{meta_http(spec)}/api/v1/clusters"
    emulator_hook(meta, "http500", "getNodeShards", "600")
    status, body = http_json(shards_url, {"clusterName": "defaultCluster"})
    assert status == 500 and body == {
        "status": "error",
        "error": "(#500)get node shards, cause:<nil>",
        "msg": "err: get cluster view: context deadline exceeded",
    }, body
    assert http_json(clusters_url)[0] == 200
    emulator_hook(meta, "http500", "clusters", "600")
    status, body = http_json(clusters_url)
    assert status == 500 and body["error"] == "(#500)get cluster, cause:<nil>", body  # type: ignore[index]
    emulator_hook(meta, "http500", "clear")
    assert http_json(shards_url, {"clusterName": "defaultCluster"})[0] == 200
    emulator_hook(meta, "http500", "getNodeShards", "1")  # N seconds, then answered again
    wait_until(
        lambda: http_json(shards_url, {"clusterName": "defaultCluster"})[0] == 200, 10, "the 500s to end"
    )


@pytest.mark.parametrize("version", ["1.2.7", "2.0.0"])
def test_meta_keeps_its_metadata_where_the_real_meta_does(standins: StandIns, version: str) -> None:
    spec = load(standins, meta=1, db=1, version=version)
    (meta,) = start_meta(standins, spec)
    standins.run(spec, "db0")
    all_shards_locked(spec)
    r, c0 = root(spec), f"{0:020d}"
    keys = etcd_range(client_url(spec), "/")
    assert not [k for k in keys if k.startswith("/ceres-emulator")], "private keys left in etcd"
    assert (
        keys[f"{r}/ClusterID"][0] == b"20" and keys[f"{r}/defaultCluster/SchemaID"][0] == b"20"
    )  # id-allocator-step
    cluster = metastore.Cluster.decode(keys[f"{r}/v1/cluster/info/{c0}"][0])
    assert (cluster.id, cluster.name, cluster.min_node_count, cluster.shard_total) == (
        0,
        "defaultCluster",
        1,
        8,
    )
    assert (
        len(
            [
                k
                for k in keys
                if k.startswith(f"{r}/v1/cluster/{c0}/shard_view/") and k.endswith("/latest_version")
            ]
        )
        == 8
    )
    assert cluster_view(spec)[1:] == ("Stable", node_shards(meta_http(spec)))  # getNodeShards reads that view
    assert f"{r}/v1/cluster/{c0}/node/{endpoint(spec, 0)}" in keys
    procedures = [k for k in keys if k.startswith(f"{r}/v1/procedure/")]
    if version == "2.0.0":
        assert procedures == [] and f"{r}/defaultCluster/ProcedureID" in keys  # not persisted from 2.0.0
    else:
        assert procedures and etcd_range(client_url(spec), "procedure")  # the unrooted procedure-id key
        record = json.loads(keys[procedures[0]][0])
        assert record["Typ"] == 2 and record["State"] == "finished", record
    if version >= "2.0.0":
        return
    # A restarted meta loads the cluster it stored: the same record, no new cluster id. (Stopped, not
    # killed: its leader key goes with it, so the new process need not wait for it to expire.)
    meta.stop(timeout=10)
    meta.start()
    wait_until(
        lambda: (
            http_json(f"{meta_http(spec)}/api/v1/clusters")[1]["data"][0]["CreatedAt"] == cluster.created_at
        ),  # type: ignore[index]
        30,
        "the stored cluster loaded",
    )
    assert etcd_range(client_url(spec), f"{r}/ClusterID")[f"{r}/ClusterID"][0] == b"20"


# --- mixed versions ------------------------------------------------------------------------------------


def respec(standins: StandIns, version: str) -> DesiredState:
    """The same cluster (names, hosts, ports) on the stand-ins of another version."""
    ensure_images(version)
    text = (standins.root / "cluster.toml").read_text()
    old_version = re.search(r'version = "([^"]+)"', text)
    assert old_version is not None
    names = build.image_names(old_version.group(1))
    new = build.image_names(version)
    text = text.replace(f'version = "{old_version.group(1)}"', f'version = "{version}"')
    text = re.sub(
        r'flavor = "[a-z]+"', f'flavor = "{"horaedb" if version.startswith("2") else "ceresdb"}"', text
    )
    text = text.replace(names["meta"], new["meta"]).replace(names["db"], new["db"])
    return standins.load(text)


def test_1_2_6_and_1_2_7_meta_members_never_agree_on_a_leader(standins: StandIns) -> None:
    """The leader key moved at 1.2.7 (`/members/leader` -> `<root>/members/leader`, META v1.2.7:
    server/server.go:173): only the etcd leader campaigns, on its own version's key, and the members
    of the other version never find a leader."""
    spec = load(standins, meta=3, db=1, version="1.2.7")
    old = respec(standins, "1.2.6")
    spec = respec(standins, "1.2.7")
    metas = [run_node(standins, old, "meta0"), *(run_node(standins, spec, f"meta{i}") for i in (1, 2))]
    set_scheduler_tick(metas, TICK_S)

    def keys() -> dict[str, tuple[bytes, int]]:
        return {
            **etcd_range(client_url(spec, 1), "/members/leader"),
            **etcd_range(client_url(spec, 1), "/ceresdb/members/leader"),
        }

    found = wait_until(keys, 60, "a meta leader key")
    assert len(found) == 1, found
    ((key, (value, _lease)),) = found.items()
    leader = next(i for i in range(3) if client_url(spec, i) == decode_member(value)[2])
    leader_is_old = key == "/members/leader"
    assert leader_is_old == (leader == 0)
    wait_until(
        lambda: http_json(f"{meta_http(spec, leader)}/api/v1/clusters")[0] == 200, 30, "the leader serving"
    )
    strangers = [0] if not leader_is_old else [1, 2]  # the members reading the other key
    for i in strangers:
        status, body = http_json(f"{meta_http(spec, i)}/api/v1/clusters")
        assert status == 500 and "no leader found" in str(body), (i, status, body)
        assert b"update leader cache" not in metas[i].logs()


def test_a_1_x_ceresdb_is_refused_by_2_0_meta(standins: StandIns) -> None:
    """horaedbproto renamed meta's gRPC service (CeresmetaRpcService -> MetaRpcService): a 1.x node's
    calls are Unimplemented, and its start fails on the default schema (exit 1)."""
    spec = load(standins, meta=1, db=1, version="2.0.0")
    start_meta(standins, spec)
    old = respec(standins, "1.2.7")
    db0 = run_node(
        standins,
        old,
        "db0",
        edit=lambda text: text.replace('root_path = "/ceresdb"', 'root_path = "/horaedb"'),
    )
    assert db0.wait(timeout=30)["StatusCode"] == 1
    assert b"unknown service meta_service.CeresmetaRpcService" in db0.logs()
    assert b"Fail to create default schema" in db0.logs()


def test_a_2_0_node_finds_1_x_data_only_with_its_catalog_and_roots_kept(standins: StandIns) -> None:
    """HoraeDB 2.0.0 defaults to the root `/horaedb` and the catalog `horaedb`; the 1.x cluster is
    found only with both roots set back to `/ceresdb` (and HORAEDB_DEFAULT_CATALOG=ceresdb for its
    tables' catalog; HDB 1a452f2c, PR #1455)."""
    spec = load(standins, meta=1, db=1, version="1.2.7")
    (meta,) = start_meta(standins, spec)
    db0 = standins.run(spec, "db0")
    locks = all_shards_locked(spec)
    old_leases = leases_of(spec, endpoint(spec, 0))
    created = http_json(f"{meta_http(spec)}/api/v1/clusters")[1]["data"][0]["CreatedAt"]  # type: ignore[index]
    for container in (db0, meta):
        container.stop(timeout=10)
    new = respec(standins, "2.0.0")
    # Defaults: a new, empty cluster under /horaedb; the 1.x keys are not looked at.
    meta2 = run_node(standins, new, "meta0", suffix="-2")
    set_scheduler_tick([meta2], TICK_S)
    wait_until(lambda: http_json(f"{meta_http(new)}/api/v1/clusters")[1]["data"], 30, "a cluster listed")  # type: ignore[index]
    db2 = run_node(standins, new, "db0", suffix="-2")
    wait_until(lambda: len(shard_locks(client_url(new), root="/horaedb")) == 8, 60, "locks under /horaedb")
    listed = http_json(f"{meta_http(new)}/api/v1/clusters")[1]["data"][0]  # type: ignore[index]
    assert listed["CreatedAt"] != created and etcd_range(client_url(new), "/horaedb/ClusterID")
    assert b"catalog=horaedb" in db2.logs()
    for container in (db2, meta2):
        container.stop(timeout=10)
    # Roots and catalog kept: the 1.x cluster, its topology and its locks' keys.
    kept = run_node(
        standins,
        new,
        "meta0",
        suffix="-3",
        edit=lambda text: text.replace('storage-root-path = "/horaedb"', 'storage-root-path = "/ceresdb"'),
    )
    set_scheduler_tick([kept], TICK_S)
    wait_until(lambda: http_json(f"{meta_http(new)}/api/v1/clusters")[1]["data"], 30, "a cluster listed")  # type: ignore[index]
    db3 = run_node(
        standins,
        new,
        "db0",
        suffix="-3",
        env={"HORAEDB_DEFAULT_CATALOG": "ceresdb"},
        edit=lambda text: text.replace('root_path = "/horaedb"', 'root_path = "/ceresdb"'),
    )
    wait_until(
        lambda: http_json(f"{meta_http(new)}/api/v1/clusters")[1]["data"][0]["CreatedAt"] == created,  # type: ignore[index]
        30,
        "the 1.x cluster loaded",
    )
    revoke(new, old_leases)  # the 1.x node's locks, as their TTL would
    wait_until(
        lambda: len(debug_shards(new, 0)) == 8 and set(debug_shards(new, 0).values()) == {"Ready"},
        60,
        "the 2.0 node serving the 1.x shards",
    )
    relocked = shard_lock_leases(client_url(new), root="/ceresdb")
    assert {s: h for s, (h, _) in relocked.items()} == locks and not {
        lease for _, lease in relocked.values()
    } & old_leases
    assert b"catalog=ceresdb" in db3.logs()
