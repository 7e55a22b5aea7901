"""CeresMeta's metadata in etcd, where and how the real meta keeps it (no HTTP, no scheduling).

Keys (META v1.2.2:server/storage/key_path.go; unchanged at HDB v2.0.0 horaemeta/server/storage/
key_path.go), `<root>` being `storage-root-path` and ids printed as 20 digits:

    <root>/v1/cluster/info/<cluster id>                       pb Cluster
    <root>/v1/cluster/<cluster id>/cluster_view/latest_version   "<20 digits>"
    <root>/v1/cluster/<cluster id>/cluster_view/<version>        pb ClusterView (old versions stay)
    <root>/v1/cluster/<cluster id>/shard_view/<shard>/latest_version, .../<shard>/<version>  pb ShardView
    <root>/v1/cluster/<cluster id>/schema/info/<schema id>       pb Schema
    <root>/v1/cluster/<cluster id>/node/<node name>              pb Node (on every heartbeat)
    <root>/v1/procedure/<cluster id, always 0 up to 1.2.7>/<procedure id>   JSON procedure.Meta (1.x)

ID allocators keep the end of their current range as a decimal string (META v1.2.2:server/id/
id_impl.go): `<root>/ClusterID` (server/cluster/manager.go:22,66), `<root>/<cluster>/SchemaID` and
`<root>/<cluster>/TableID` (server/cluster/metadata/cluster_metadata.go:22-23,47-48), procedure ids
under the unrooted key `procedure` up to 1.2.7 (server/cluster/cluster.go:20,40) and
`<root>/<cluster>/ProcedureID` at 2.0.0 (HDB v2.0.0:horaemeta/server/cluster/cluster.go:39,60).

The values are the protobuf messages of ceresdbproto `protos/cluster.proto` (apache/incubator-
horaedb-proto v1.0.4..v1.0.16), encoded as Go's proto.Marshal does (zero values omitted).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass, field

import etcdv3

# --- protobuf, the few wire types these messages use ------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode(fields: list[tuple[int, object]]) -> bytes:
    """(field number, value) pairs: int/bool as varint, str/bytes as length-delimited (a nested
    message is passed already encoded, as bytes); a list repeats the field; zero values are left out."""
    out = bytearray()
    for number, value in fields:
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, bool | int):
                if item:
                    out += _varint(number << 3) + _varint(int(item))
            elif isinstance(item, str | bytes):
                data = item.encode() if isinstance(item, str) else item
                if data or isinstance(value, list):
                    out += _varint(number << 3 | 2) + _varint(len(data)) + data
    return bytes(out)


def decode(data: bytes) -> dict[int, list[int | bytes]]:
    """Field number -> values in order (varints as int, length-delimited as bytes)."""
    fields: dict[int, list[int | bytes]] = {}
    i = 0

    def varint() -> int:
        nonlocal i
        value, shift = 0, 0
        while i < len(data):
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
        raise ValueError("truncated varint")

    while i < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            fields.setdefault(number, []).append(varint())
        elif wire == 2:
            length = varint()
            fields.setdefault(number, []).append(data[i : i + length])
            i += length
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return fields


def _int(fields: dict[int, list[int | bytes]], number: int) -> int:
    value = fields.get(number, [0])[-1]
    return value if isinstance(value, int) else 0


def _str(fields: dict[int, list[int | bytes]], number: int) -> str:
    value = fields.get(number, [b""])[-1]
    return value.decode() if isinstance(value, bytes) else ""


# --- the records ------------------------------------------------------------------------------------

TOPOLOGY_PB = {"unknown": 0, "static": 1, "dynamic": 2}
"""clusterpb.Cluster_TopologyType (META v1.2.2:server/storage/types.go convertTopologyTypeToPB)."""
STATE_PB = {"Empty": 0, "Prepare": 1, "Stable": 4}
"""clusterpb.ClusterView_ClusterState: EMPTY, PREPARE_REBALANCE, STABLE (types.go convertClusterStateToPB)."""


@dataclass
class Cluster:
    id: int
    name: str
    min_node_count: int
    shard_total: int
    topology_type: str
    enable_schedule: bool = True
    procedure_executing_batch_size: int = 0
    created_at: int = 0
    modified_at: int = 0

    def encode(self) -> bytes:
        return encode(
            [
                (1, self.id),
                (2, self.name),
                (3, self.min_node_count),
                (5, self.shard_total),
                (6, self.created_at),
                (8, self.modified_at),
                (9, self.enable_schedule),
                (10, TOPOLOGY_PB.get(self.topology_type, 1)),
                (11, self.procedure_executing_batch_size),
            ]
        )

    @classmethod
    def decode(cls, data: bytes) -> Cluster:
        f = decode(data)
        topology = {v: k for k, v in TOPOLOGY_PB.items()}.get(_int(f, 10), "static")
        return cls(
            _int(f, 1),
            _str(f, 2),
            _int(f, 3),
            _int(f, 5),
            topology,
            bool(_int(f, 9)),
            _int(f, 11),
            _int(f, 6),
            _int(f, 8),
        )


def encode_cluster_view(
    cluster_id: int, version: int, state: str, shard_nodes: list[tuple[int, str]], created_at: int
) -> bytes:
    nodes = [encode([(1, shard), (3, node)]) for shard, node in shard_nodes]  # shard_role LEADER = 0
    return encode([(1, cluster_id), (2, version), (3, STATE_PB[state]), (4, nodes), (6, created_at)])


def decode_cluster_view(data: bytes) -> tuple[int, str, list[tuple[int, str]]]:
    """(version, state, [(shard, node)] in topology order)."""
    f = decode(data)
    state = {v: k for k, v in STATE_PB.items()}.get(_int(f, 3), "Empty")
    nodes = []
    for raw in f.get(4, []):
        if isinstance(raw, bytes):
            sn = decode(raw)
            nodes.append((_int(sn, 1), _str(sn, 3)))
    return _int(f, 2), state, nodes


def encode_shard_view(shard: int, version: int, created_at: int) -> bytes:
    return encode([(1, shard), (2, version), (4, created_at)])  # table_ids: none, no table exists


def encode_schema(schema_id: int, cluster_id: int, name: str, created_at: int) -> bytes:
    return encode([(1, schema_id), (2, cluster_id), (3, name), (4, created_at)])


def encode_node(name: str, last_touch_ms: int, zone: str = "", node_version: str = "") -> bytes:
    """pb Node{name, stats{lease, zone, node_version}, last_touch_time, state ONLINE = 0}; the lease a
    CeresDB heartbeat sends is always 0."""
    stats = encode([(2, zone), (3, node_version)])
    return encode([(1, name), (2, [stats]), (3, last_touch_ms)])


def fmt_id(n: int) -> str:
    return f"{n:020d}"


@dataclass(frozen=True)
class Keys:
    root: str

    def _join(self, *parts: str) -> bytes:
        """path.Join: "/ceresdb" + "v1" + ... -> "/ceresdb/v1/..."; an empty root gives a relative key."""
        joined = "/".join(p.strip("/") for p in (self.root, *parts) if p.strip("/"))
        return (("/" if self.root.startswith("/") else "") + joined).encode()

    def cluster_prefix(self) -> bytes:
        return self._join("v1", "cluster", "info") + b"/"

    def cluster(self, cluster_id: int) -> bytes:
        return self._join("v1", "cluster", "info", fmt_id(cluster_id))

    def cluster_view_latest(self, cluster_id: int) -> bytes:
        return self._join("v1", "cluster", fmt_id(cluster_id), "cluster_view", "latest_version")

    def cluster_view(self, cluster_id: int, version: int) -> bytes:
        return self._join("v1", "cluster", fmt_id(cluster_id), "cluster_view", fmt_id(version))

    def shard_view_latest(self, cluster_id: int, shard: int) -> bytes:
        return self._join("v1", "cluster", fmt_id(cluster_id), "shard_view", fmt_id(shard), "latest_version")

    def shard_view(self, cluster_id: int, shard: int, version: int) -> bytes:
        return self._join("v1", "cluster", fmt_id(cluster_id), "shard_view", fmt_id(shard), fmt_id(version))

    def schema_prefix(self, cluster_id: int) -> bytes:
        return self._join("v1", "cluster", fmt_id(cluster_id), "schema", "info") + b"/"

    def schema(self, cluster_id: int, schema_id: int) -> bytes:
        return self._join("v1", "cluster", fmt_id(cluster_id), "schema", "info", fmt_id(schema_id))

    def node(self, cluster_id: int, name: str) -> bytes:
        return self._join("v1", "cluster", fmt_id(cluster_id), "node", name)

    def procedure(self, cluster_id: int, procedure_id: int, typ: int | None = None) -> bytes:
        if typ is None:
            return self._join("v1", "procedure", fmt_id(cluster_id), fmt_id(procedure_id))
        return self._join("v1", "procedure", fmt_id(cluster_id), str(typ), fmt_id(procedure_id))

    def cluster_id_allocator(self) -> bytes:
        return self._join("ClusterID")

    def schema_id_allocator(self, cluster: str) -> bytes:
        return self._join(cluster, "SchemaID")


class Allocator:
    """id.AllocatorImpl: a range [base, end) in memory; the end is kept in etcd. The first use reads
    the stored end and claims [end, end + step) (or [0, step) when the key is missing), with a
    compare-and-swap; so each new leader skips what its predecessor had claimed but not used."""

    def __init__(self, etcd: etcdv3.Client, key: bytes, step: int) -> None:
        self.etcd, self.key, self.step = etcd, key, step
        self.base = self.end = 0
        self.initialized = False
        self.lock = threading.Lock()

    def alloc(self) -> int:
        with self.lock:
            if not self.initialized:
                found = self.etcd.get(self.key)
                if found is None:
                    if not self.etcd.txn(
                        [etcdv3.key_missing(self.key)], [etcdv3.op_put(self.key, str(self.step).encode())]
                    ):
                        raise etcdv3.EtcdError(
                            f"txn put end id failed, key is exist, key:{self.key.decode()}"
                        )
                    self.base, self.end = 0, self.step
                else:
                    self._rebase(int(found[0]))
                self.initialized = True
            elif self.base == self.end:
                self._rebase(self.end)
            value = self.base
            self.base += 1
            return value

    def _rebase(self, current_end: int) -> None:
        new_end = current_end + self.step
        if not self.etcd.txn(
            [etcdv3.value_equals(self.key, str(current_end).encode())],
            [etcdv3.op_put(self.key, str(new_end).encode())],
        ):
            raise etcdv3.EtcdError(f"txn put end id failed, endEquals failed, key:{self.key.decode()}")
        self.base, self.end = current_end, new_end


def now_ms() -> int:
    return int(time.time() * 1000)


def procedure_record(procedure_id: int, shard: int, new_leader: str, fsm_state: str, state: str) -> bytes:
    """A transfer-leader procedure as 1.x persists it: JSON procedure.Meta{ID, Typ (TransferLeader =
    2), State, RawData} whose RawData (base64, Go's []byte) is the JSON rawData (META v1.2.2:server/
    coordinator/procedure/storage_impl.go:38-50,114-121; operation/transferleader/transfer_leader.go:
    57-66,302-330)."""
    raw = json.dumps(
        {
            "ID": procedure_id,
            "FsmState": fsm_state,
            "State": state,
            "ShardID": shard,
            "OldLeaderNodeName": "",
            "NewLeaderNodeName": new_leader,
        },
        separators=(",", ":"),
    )
    return json.dumps(
        {"ID": procedure_id, "Typ": 2, "State": state, "RawData": base64.b64encode(raw.encode()).decode()},
        separators=(",", ":"),
    ).encode()


@dataclass
class Loaded:
    """What the leader's cluster manager loads at election (or creates)."""

    cluster: Cluster
    view_version: int
    view_state: str
    shard_nodes: list[tuple[int, str]]
    schemas: dict[str, int] = field(default_factory=dict)
