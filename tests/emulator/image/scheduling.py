"""CeresMeta's static topology, per version: node registration, where shards go, which reopen.

Pure functions, no I/O: meta.py feeds them heartbeats and a clock, and the emulator's tests check
them against the real algorithms without Docker. Every rule cites the source it mirrors
(META = apache/incubator-horaedb-meta, HDB = apache/horaedb; see ../README.md).
"""

from __future__ import annotations

import binascii
import bisect
import math
import random
from dataclasses import dataclass, field

Version = tuple[int, int, int]

NODE_EXPIRY_S = 10.0
"""A node is expired when now > LastTouchTime + 10 s (META v1.2.2:server/cluster/metadata/types.go)."""
DEFAULT_BATCH_SIZE = 2**32 - 1
"""`procedure-executing-batch-size` defaults to math.MaxUint32 (META v1.2.7:server/config/config.go:66)."""

EMPTY, PREPARE, STABLE = "Empty", "Prepare", "Stable"


# --- the cluster view (META v1.2.2:server/cluster/metadata/cluster_metadata.go RegisterNode,
#     topology_manager.go UpdateClusterViewByNode / IsPrepareFinished) ------------------------------


@dataclass
class View:
    """storage.ClusterView: state, version (+1 on every update) and ShardNodes in topology order."""

    state: str = EMPTY
    version: int = 0
    shard_nodes: list[tuple[int, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "State": self.state,
            "Version": self.version,
            "ShardNodes": [list(sn) for sn in self.shard_nodes],
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> View:
        nodes = data.get("ShardNodes") or []
        assert isinstance(nodes, list)
        return cls(str(data["State"]), int(str(data["Version"])), [(int(s), str(n)) for s, n in nodes])


@dataclass(frozen=True)
class Registered:
    """metadata.RegisteredNode: the last heartbeat of a node, as the leader's cache holds it.
    `partial`: the shards it reported PartialOpen (a status heartbeats carry from 1.2.5, HDB v1.2.5:
    meta_client/src/types.rs:270-284; every other reported shard counts as Ready)."""

    last_touch: float
    shards: tuple[int, ...]
    partial: tuple[int, ...] = ()

    def is_expired(self, now: float) -> bool:
        return now > self.last_touch + NODE_EXPIRY_S


def register_node(
    view: View,
    registered: dict[str, Registered],
    name: str,
    shards: list[int],
    min_node_count: int,
    now: float,
    partial: tuple[int, ...] = (),
) -> bool:
    """One heartbeat (RegisterNode). Mutates `view` and `registered`; True if the view changed.

    - Empty -> Prepare once the cache *already* holds MinNodeCount nodes (checked before this node
      is added, so it takes one heartbeat more than the count).
    - Outside Stable (static topology), a node whose shard set changed moves to the front of
      ShardNodes with the shards it reports: the topology is what the nodes say they opened.
    """
    changed = False
    if len(registered) >= min_node_count and view.state == EMPTY:
        view.state, view.version, view.shard_nodes = PREPARE, view.version + 1, []
        changed = True
    old = registered.get(name)
    registered[name] = Registered(now, tuple(shards), partial)
    if view.state == STABLE:
        return changed
    if old is not None and set(old.shards) == set(shards) and len(old.shards) == len(shards):
        return changed
    view.shard_nodes = [(s, name) for s in shards] + [sn for sn in view.shard_nodes if sn[1] != name]
    view.version += 1
    return True


def prepare_finished(view: View, shard_total: int) -> bool:
    return view.state == PREPARE and len(view.shard_nodes) == shard_total


# --- node pickers ------------------------------------------------------------------------------


def crc32_ring_owner(nodes: list[str], shard: int, replicas: int = 50) -> str | None:
    """1.2.2's ConsistentHashNodePicker: groupcache's ring, crc32 IEEE, 50 replicas per node,
    key strconv.Itoa(i)+name, looked up with strconv.Itoa(shardID) (META v1.2.2:
    server/coordinator/node_picker.go, server/hash/consistent_hash_ring.go). Uneven by nature:
    two nodes often split 8 shards 5/3, 6/2 or even 8/0."""
    ring: list[int] = []
    owners: dict[int, str] = {}
    for node in nodes:
        for i in range(replicas):
            h = binascii.crc32(f"{i}{node}".encode())
            ring.append(h)
            owners[h] = node
    if not ring:
        return None
    ring.sort()
    idx = bisect.bisect_left(ring, binascii.crc32(str(shard).encode()))
    return owners[ring[idx if idx < len(ring) else 0]]


_M64 = 2**64 - 1


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M64


def _fmix(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _M64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _M64
    return k ^ (k >> 33)


def murmur3_sum64(data: bytes, seed: int = 0) -> int:
    """spaolacci/murmur3 v1.1.0 Sum64: the first half of MurmurHash3 x64_128."""
    c1, c2 = 0x87C37B91114253D5, 0x4CF5AD432745937F
    h1 = h2 = seed
    nblocks = len(data) // 16
    for i in range(nblocks):
        k1 = int.from_bytes(data[16 * i : 16 * i + 8], "little")
        k2 = int.from_bytes(data[16 * i + 8 : 16 * i + 16], "little")
        k1 = (_rotl((k1 * c1) & _M64, 31) * c2) & _M64
        h1 ^= k1
        h1 = ((_rotl(h1, 27) + h2) * 5 + 0x52DCE729) & _M64
        k2 = (_rotl((k2 * c2) & _M64, 33) * c1) & _M64
        h2 ^= k2
        h2 = ((_rotl(h2, 31) + h1) * 5 + 0x38495AB5) & _M64
    tail = data[16 * nblocks :]
    if len(tail) > 8:
        k2 = int.from_bytes(tail[8:], "little")
        h2 ^= (_rotl((k2 * c2) & _M64, 33) * c1) & _M64
    if tail:
        k1 = int.from_bytes(tail[:8], "little")
        h1 ^= (_rotl((k1 * c1) & _M64, 31) * c2) & _M64
    h1 ^= len(data)
    h2 ^= len(data)
    h1 = (h1 + h2) & _M64
    h2 = (h2 + h1) & _M64
    h1, h2 = _fmix(h1), _fmix(h2)
    return (h1 + h2) & _M64


def uniform_owners(members: list[str], num_partitions: int, replication: int = 127) -> dict[int, str]:
    """1.2.7+'s ConsistentUniformHashNodePicker: consistent hashing with bounded loads, murmur3,
    127 virtual nodes `<name>@$<i>`, partition key = the id as 8 little-endian bytes; every member
    gets floor or ceil of the average (META v1.2.7:server/coordinator/scheduler/nodepicker/
    node_picker.go, hash/consistent_uniform.go; the same at HDB v2.0.0 horaemeta)."""
    members = sorted(members)
    avg = num_partitions / len(members)
    min_load, max_load = math.floor(avg), math.ceil(avg)
    ring: list[int] = []
    node_to_member: dict[int, str] = {}
    for member in members:
        for i in range(replication):
            h = murmur3_sum64(f"{member}@${i}".encode())
            node_to_member[h] = member
            ring.append(h)
    ring.sort()
    loads = dict.fromkeys(members, 0)
    owners: dict[int, str] = {}
    for part in range(num_partitions):
        key = murmur3_sum64(part.to_bytes(4, "little") + b"\0\0\0\0")
        start = bisect.bisect_left(ring, key)
        start = start if start < len(ring) else 0
        for allowed in (min_load, max_load):
            if allowed == 0:
                continue
            idx = start
            for _ in range(len(ring)):
                member = node_to_member[ring[idx]]
                if loads[member] + 1 <= allowed:
                    owners[part] = member
                    loads[member] += 1
                    break
                idx = (idx + 1) % len(ring)
            if part in owners:
                break
    return owners


def uniformity_owners(members: list[str], num_partitions: int) -> dict[int, str]:
    """1.2.5 and 1.2.6's UniformityConsistentHashNodePicker (buraksezer/consistent's algorithm):
    murmur3, `num_partitions` virtual nodes per member keyed `<name><i>`, partition key = the id as 8
    little-endian bytes, each partition to the first member on the ring below ceil(average) load
    (META v1.2.5:server/coordinator/node_picker.go:41-85, server/hash/uniformity_hash.go)."""
    ring: list[int] = []
    owner_of: dict[int, str] = {}
    for member in members:
        for i in range(num_partitions):
            h = murmur3_sum64(f"{member}{i}".encode())
            owner_of[h] = member
            ring.append(h)
    ring.sort()
    average = math.ceil(num_partitions / len(members))
    loads = dict.fromkeys(members, 0)
    owners: dict[int, str] = {}
    for part in range(num_partitions):
        key = murmur3_sum64(part.to_bytes(8, "little"))
        idx = bisect.bisect_left(ring, key)
        idx = idx if idx < len(ring) else 0
        for _ in range(len(ring)):
            member = owner_of[ring[idx]]
            if loads[member] + 1 <= average:
                owners[part] = member
                loads[member] += 1
                break
            idx = (idx + 1) % len(ring)
    return owners


def owners_for(version: Version, members: list[str], shard_total: int) -> dict[int, str]:
    """The batch pickers: 1.2.5/1.2.6 uniformity hash, 1.2.7+ bounded-load consistent hash."""
    if version < (1, 2, 7):
        return uniformity_owners(members, shard_total)
    return uniform_owners(members, shard_total)


# --- the static-topology scheduler, one pass ------------------------------------------------------


@dataclass
class Pass:
    opens: list[tuple[int, str]]
    """(shard, node) open-shard procedures this pass submits, in the order they were created."""
    error: str | None = None
    reason: str = ""


def static_schedule(
    version: Version,
    view: View,
    shard_total: int,
    registered: dict[str, Registered],
    now: float,
    rng: random.Random,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Pass:
    """One tick of the static scheduler.

    Prepare: the unassigned shards in Go map order (random). 1.2.2 opens ONE shard per tick on the
    node its crc32 ring picks (META v1.2.2:server/coordinator/scheduler/static_topology_shard_scheduler.go:
    29-54); 1.2.4 opens up to batch_size of them in one batch, each on its crc32 pick (v1.2.4
    static_topology_shard_scheduler.go:35-61); 1.2.5/1.2.6 pick them all at once with the uniformity
    hash (v1.2.5 same file :35-66), 1.2.7+ with the bounded-load hash (v1.2.7 static/scheduler.go:57-90).

    Stable: walk ShardNodes in topology order; a shard whose node is online but did not report it
    (open or, from 1.2.5, PartialOpen) is reopened. 1.2.2 returns the first such shard (one per tick
    for the whole cluster, head-of-line; static_topology_shard_scheduler.go:55-78); from 1.2.4 up to
    batch_size (v1.2.4 :62-86). Up to and including 1.2.7 an assigned node that is offline (expired,
    or never registered with this leader) aborts the whole pass, dropping what was collected (v1.2.2
    :58-60, v1.2.4 :65-68, v1.2.7 static/scheduler.go:94-96); 2.0.0 skips it (`continue`, HDB v2.0.0:
    horaemeta/server/coordinator/scheduler/static/scheduler.go:116-119).
    """
    alive = sorted(name for name, node in registered.items() if not node.is_expired(now))
    batched = version >= (1, 2, 4)
    if view.state == PREPARE:
        assigned = {shard for shard, _ in view.shard_nodes}
        unassigned = [s for s in range(shard_total) if s not in assigned]
        rng.shuffle(unassigned)  # `for _, shardView := range ShardViewsMapping`: a Go map
        if not unassigned:
            return Pass([])
        if not alive:
            return Pass(
                [],
                "at least one online nodes is required"
                if version < (1, 2, 5)
                else "no alive node in cluster",
            )
        if version < (1, 2, 5):
            picks = []
            for shard in unassigned if batched else unassigned[:1]:
                node = crc32_ring_owner(alive, shard)
                assert node is not None
                picks.append((shard, node))
                if len(picks) >= batch_size:
                    break
            return Pass(picks, reason="Cluster initialization, assign shard to node")
        owners = owners_for(version, alive, shard_total)
        # 1.2.5-1.2.7 range over the picked map (a Go map: random order) and stop at batch_size.
        picks = [(s, owners[s]) for s in unassigned][:batch_size]
        return Pass(picks, reason="Cluster initialization, assign shard to node")
    if view.state == STABLE:
        opens: list[tuple[int, str]] = []
        for shard, name in view.shard_nodes:
            node = registered.get(name)
            if node is None or node.is_expired(now):
                if version < (2, 0, 0):
                    return Pass([], f"node:{name} not found in topology")
                continue
            if shard not in node.shards:
                opens.append((shard, name))
                if not batched or len(opens) >= batch_size:
                    break
        return Pass(opens, reason="Cluster state is stable, shard is reopened")
    return Pass([])


def reopen_schedule(
    version: Version,
    view: View,
    registered: dict[str, Registered],
    now: float,
    order: list[str],
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Pass:
    """The reopen scheduler (from 1.2.5, static and dynamic topology): in Stable, every shard an online
    node reported PartialOpen is opened again on that node, in one batch (META v1.2.5:server/
    coordinator/scheduler/reopen_shard_scheduler.go:30-87; v1.2.7 reopen/scheduler.go:51-108). The
    batch-size `break` leaves only the inner loop, over one node's shards. `order` is the order of
    RegisteredNodes (a Go map: random)."""
    if version < (1, 2, 5) or view.state != STABLE:
        return Pass([])
    opens: list[tuple[int, str]] = []
    for name in order:
        node = registered.get(name)
        if node is None or node.is_expired(now):
            continue
        for shard in node.partial:
            opens.append((shard, name))
            if len(opens) >= batch_size:
                break
    return Pass(opens, reason="the shard needs to be reopen")
