"""Desired state -> each node's TOML document and environment. Pure functions.

Documents keep secret references as `SecretRef` leaves: `materialize` swaps in the values just
before a file is written, `redacted` swaps in "***" for anything shown to a person. Every pitfall
of `docs/real-servers.md` (section 14) that rendering can prevent is prevented here: the server
address without a port (1), `meta_addr` on the client port (2), `etcd_client` set (7), removed
keys dropped (4), the node count derived (5), `bind_addr = 0.0.0.0` (13), version-gated names (14).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import tomli_w
from pydantic import BaseModel

from ceres_supervisor.model import durations
from ceres_supervisor.model.addresses import machine_of
from ceres_supervisor.model.spec import REDACTED, DbNode, DesiredState, MetaNode, SecretRef

Document = dict[str, Any]


@dataclass(frozen=True)
class RenderedNode:
    """Everything the engine needs to run one node, except secret values."""

    name: str
    role: Literal["meta", "ceresdb"]
    host: str
    config_name: str
    """File name of the rendered config (`ceresmeta.toml`, `ceresdb.toml`, horaedb names)."""
    config_mount: str
    """Where the image reads its config; the file is mounted there read-only."""
    data_mount: str
    """Where the node's data directory is mounted read-write."""
    document: Document
    env: dict[str, str] = field(default_factory=dict)

    @property
    def has_secret(self) -> bool:
        return _has_secret(self.document)


# --- documents ---------------------------------------------------------------------------------


def merge(base: Document, override: Document) -> Document:
    """Deep merge: tables merge key by key, any other value in `override` wins."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _has_secret(value: Any) -> bool:
    if isinstance(value, SecretRef):
        return True
    if isinstance(value, dict):
        return any(_has_secret(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_secret(v) for v in value)
    return False


def _replace_secrets(value: Any, replace: Callable[[SecretRef], Any]) -> Any:
    if isinstance(value, SecretRef):
        return replace(value)
    if isinstance(value, dict):
        return {k: _replace_secrets(v, replace) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_secrets(v, replace) for v in value]
    return value


CREATION_ONLY: Final = frozenset({"default-cluster-node-count", "default-cluster-shard-total"})
"""Meta keys read only when meta creates the cluster (frozen into it at first start): a change
never reaches a running cluster, so it is no reason to recreate a running member."""


def materialize(document: Document, resolve: Callable[[SecretRef], str]) -> Document:
    """The document with every secret reference replaced by its value (for the file only)."""
    result: Document = _replace_secrets(document, resolve)
    return result


def redacted(document: Document) -> Document:
    """The document with every secret shown as "***" (for anything a person or log sees)."""
    result: Document = _replace_secrets(document, lambda _ref: REDACTED)
    return result


def to_toml(document: Document) -> str:
    """TOML text of a materialized or redacted document."""
    return tomli_w.dumps(document)


def env_text(env: dict[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in sorted(env.items()))


# --- meta --------------------------------------------------------------------------------------


def initial_cluster(spec: DesiredState) -> str:
    """One string shared by every member; each member's own entry is its advertise-peer URL."""
    return ",".join(f"{m.name}=http://{m.host}:{m.peer_port}" for m in spec.meta.nodes)


def render_meta(spec: DesiredState, node: MetaNode) -> RenderedNode:
    release = spec.release
    document: Document = {
        "node-name": node.name,
        "data-dir": release.meta_data_path,
        "storage-root-path": release.root_path,
        "initial-cluster": initial_cluster(spec),
        # Listen on every interface (host networking), advertise the address others reach.
        "client-urls": f"http://0.0.0.0:{node.client_port}",
        "peer-urls": f"http://0.0.0.0:{node.peer_port}",
        "advertise-client-urls": f"http://{node.host}:{node.client_port}",
        "advertise-peer-urls": f"http://{node.host}:{node.peer_port}",
        "default-cluster-name": spec.cluster.name,
        # Frozen into the cluster at first start (pitfall 5): derived, never typed by hand.
        "default-cluster-node-count": len(spec.ceresdb.nodes),
        "default-cluster-shard-total": spec.meta.shard_total,
        "topology-type": spec.meta.topology,
        release.meta_http_port_key: node.http_port,
        "log": {"level": "info"},
        "etcd-log": {"level": "info"},
    }
    document = merge(merge(document, spec.meta.config), node.config)
    return RenderedNode(
        name=node.name,
        role="meta",
        host=node.host,
        config_name=release.meta_config_name,
        config_mount=release.meta_config_path,
        data_mount=release.meta_data_path,
        document=document,
        env={},
    )


# --- CeresDB -----------------------------------------------------------------------------------


def meta_addr(spec: DesiredState, node: DbNode) -> str:
    """`http://<meta>:<client_port>` of a meta node on the same machine, else the first one."""
    if spec.ceresdb.meta_addr is not None:
        return spec.ceresdb.meta_addr
    same = [m for m in spec.meta.nodes if machine_of(m.host) == machine_of(node.host)]
    chosen = same[0] if same else spec.meta.nodes[0]
    return f"http://{chosen.host}:{chosen.client_port}"


def etcd_server_addrs(spec: DesiredState) -> list[str]:
    return [f"{m.host}:{m.client_port}" for m in spec.meta.nodes]


def _as_table(model: BaseModel, exclude: frozenset[str] = frozenset()) -> Document:
    """A model as a TOML table: unset keys dropped, secret references kept as leaves."""
    table: Document = {}
    for key in type(model).model_fields:
        value = getattr(model, key)
        if key in exclude or value is None:
            continue
        if isinstance(value, BaseModel) and not isinstance(value, SecretRef):
            value = _as_table(value)
        table[key] = value
    return table


def _wal(spec: DesiredState) -> Document:
    wal, data = spec.ceresdb.wal, spec.release.db_data_path
    table: Document = {"type": wal.type}
    if wal.type == "RocksDB":
        table["data_dir"] = wal.data_dir or f"{data}/wal"
    elif wal.type == "Obkv":
        assert wal.obkv is not None
        table["obkv"] = _as_table(wal.obkv)
    else:
        assert wal.kafka is not None
        table["kafka"] = _as_table(wal.kafka)
    if wal.data_namespace:
        table["data_namespace"] = dict(wal.data_namespace)
    return table


def _object_store(spec: DesiredState) -> Document:
    store, data = spec.ceresdb.object_store, spec.release.db_data_path
    if store.type == "Local":
        return {"type": "Local", "data_dir": store.data_dir or f"{data}/store"}
    return _as_table(store, exclude=frozenset({"data_dir"}))


def render_ceresdb(spec: DesiredState, node: DbNode) -> RenderedNode:
    """The seed's complete configuration, corrected for the version (see module docstring)."""
    release, db = spec.release, spec.ceresdb
    data = release.db_data_path
    server: Document = {
        "bind_addr": "0.0.0.0",
        "http_port": node.http_port,
        "grpc_port": node.grpc_port,
        "mysql_port": node.mysql_port,
    }
    if release.has_postgresql_port:
        server["postgresql_port"] = node.postgresql_port or 5433
    document: Document = {
        "node": {"addr": node.host},
        "server": server,
        "logger": {"level": "info"},
        # The seed's background_thread_num is gone since 1.2.0; its replacements keep defaults.
        "runtime": {"read_thread_num": 20, "write_thread_num": 16},
        "cluster_deployment": {
            "mode": "WithMeta",
            "meta_client": {
                "cluster_name": spec.cluster.name,
                "meta_addr": meta_addr(spec, node),
                "lease": durations.format_duration(db.lease),
                "timeout": durations.format_duration(db.timeout),
            },
            "etcd_client": {
                "server_addrs": etcd_server_addrs(spec),
                "root_path": release.root_path,
                "shard_lock_lease_ttl_sec": db.shard_lock_ttl,
                **({"enable_shard_lock_fast_reacquire": False} if release.has_fast_reacquire else {}),
            },
        },
        "analytic": {
            # write_group_* are gone since 1.2.0.
            "replay_batch_size": 100,
            "max_replay_tables_per_batch": 128,
            "sst_background_read_parallelism": 8,
            # All four keys: at 1.2.2 the table has no defaults once present.
            "manifest": {
                "scan_batch_size": 100,
                "snapshot_every_n_updates": 10000,
                "scan_timeout": "5s",
                "store_timeout": "5s",
            },
            "wal": _wal(spec),
            "storage": {
                "mem_cache_capacity": "20GB",
                "mem_cache_partition_bits": 8,
                "disk_cache_dir": f"{data}/cache",
                "disk_cache_capacity": "0G",
                "disk_cache_page_size": "4M",
                "object_store": _object_store(spec),
            },
            "table_opts": {"arena_block_size": 2097152, "write_buffer_size": 33554432},
            # The seed's [analytic.compaction_config] is read under this name since 1.2.0.
            "compaction": {
                "schedule_channel_len": 16,
                "schedule_interval": "30m",
                "max_ongoing_tasks": 8,
                "memory_limit": "4G",
            },
        },
    }
    document = merge(merge(document, db.config), node.config)
    return RenderedNode(
        name=node.name,
        role="ceresdb",
        host=node.host,
        config_name=release.db_config_name,
        config_mount=release.db_config_path,
        data_mount=data,
        document=document,
        # Verbatim into [node] addr: the host alone (pitfall 1). A 2.x node on 1.x data: catalog "ceresdb".
        env={release.server_addr_env: node.host, **release.catalog_env},
    )


def render(spec: DesiredState) -> list[RenderedNode]:
    """Every node, meta first, in file order."""
    return [render_meta(spec, m) for m in spec.meta.nodes] + [
        render_ceresdb(spec, d) for d in spec.ceresdb.nodes
    ]
