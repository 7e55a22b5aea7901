"""Per-version schema of the CeresDB/HoraeDB and CeresMeta/HoraeMeta server configs, plus one checker.

Pure data and one pure function, standard library only: this file is also copied into stand-in
Docker images that have nothing but python3. Every table below was read from the real server
sources at the git tags in `CERESDB_VERSIONS`/`HORAEDB_VERSIONS` (citations in the comments: "HDB
<tag>:<path> <struct>" for apache/horaedb, "META <tag>:<path>" for apache/incubator-horaedb-meta).

Representation
--------------
* A `Table` maps a key to a `Node`. A key ending in "!" is a required sub-table (the struct has no
  serde default, so the table must be present when its parent is).
* A `Leaf` is a type token; a trailing "!" means required (no serde default and not an `Option`).
* A `Tagged` is a serde internally tagged enum (`#[serde(tag = "...")]`): the tag key sits beside
  the chosen variant's fields. The adjacently tagged `BlockRule` of 2.0.0 (`type`, and `content`
  for a variant with data) is written the same way.

Type tokens: "str", "bool", "u8" "u16" "u32" "u64" "usize" "i8" "i16" "i32" "i64", "f32" "f64",
"duration" (ReadableDuration: a string only, lowercase units d h m s ms in that order), "size"
(ReadableSize: a non-negative integer of bytes or a string like "64MB", binary multiples),
"nonzero[usize]" (std NonZeroUsize: 0 is refused), "list[T]", "map[T]", "any", "@Name" (the node
`NAMED[Name]`, for lists of tables and enum payloads), and "enum[A|B|C=T]": a serde externally
tagged enum; a unit variant `A` is the string "A", a newtype variant `C=T` is the one-key table
`{C = <T>}` (e.g. `compaction_strategy = {SizeTiered = {...}}`).

How the servers react (and what `check` reports): CeresDB's top-level `Config` has
`deny_unknown_fields`, so an unknown top-level key is fatal (exit 101); unknown keys anywhere else
are ignored, in CeresDB and in CeresMeta alike. A wrong type or a missing required key is fatal in
both (CeresDB exit 101, CeresMeta panics, exit 2). CeresMeta (go-toml v2) also matches keys
case-insensitively, which `check` does not model: it reports such a key as unknown.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Final

from ceres_supervisor.model.spec import key_segment

Leaf = str
Table = dict[str, "Node"]


@dataclass(frozen=True)
class Tagged:
    """A serde internally tagged enum: the tag key sits beside the variant's fields."""

    tag: str
    variants: dict[str, Table]
    required: bool = False


Node = Leaf | Table | Tagged
Version = tuple[int, int, int]

CERESDB_VERSIONS: Final[tuple[Version, ...]] = ((1, 2, 2), (1, 2, 4), (1, 2, 5), (1, 2, 6), (1, 2, 7))
HORAEDB_VERSIONS: Final[tuple[Version, ...]] = ((2, 0, 0),)


@dataclass(frozen=True)
class Violation:
    path: str
    kind: str
    message: str
    expected: str | None = None


# ==================================================================================================
# Data: CeresDB / HoraeDB (HDB). v1.2.2 is written out; later versions are explicit edits.
# ==================================================================================================

# Nodes reached through lists or enum payloads, referenced as "@Name".
NAMED: Final[dict[str, Node]] = {
    # HDB v1.2.2:router/src/rule_based.rs PrefixRule, HashRule (no serde default: all required)
    "PrefixRule": {"schema": "str!", "prefix": "str!", "shard": "u32!"},
    "HashRule": {"schema": "str!", "shards": "list[u32]!"},
    # HDB v1.2.2:server/src/config.rs ShardView (no default); router/src/endpoint.rs Endpoint (derived
    # Deserialize: a table, not "host:port")
    "ShardView": {"shard_id": "u32!", "endpoint!": {"addr": "str!", "port": "u16!"}},
    # HDB v1.2.2:server/src/config.rs SchemaShardView (#[serde(default)])
    "SchemaShardView": {
        "schema": "str",
        "default_engine_type": "str",
        "default_timestamp_column_name": "str",
        "shard_views": "list[@ShardView]",
    },
    # HDB v1.2.2:analytic_engine/src/compaction/mod.rs SizeTieredCompactionOptions (no serde default)
    "SizeTieredCompactionOptions": {
        "bucket_low": "f32!",
        "bucket_high": "f32!",
        "min_sstable_size": "size!",
        "min_threshold": "usize!",
        "max_threshold": "usize!",
        "max_input_sstable_size": "size!",
    },
    # HDB v1.2.2:analytic_engine/src/compaction/mod.rs TimeWindowCompactionOptions; TimeUnit is
    # common_util/src/config.rs, rename_all = "lowercase"
    "TimeWindowCompactionOptions": {
        "size_tiered!": {
            "bucket_low": "f32!",
            "bucket_high": "f32!",
            "min_sstable_size": "size!",
            "min_threshold": "usize!",
            "max_threshold": "usize!",
            "max_input_sstable_size": "size!",
        },
        "timestamp_resolution": "enum[nanoseconds|microseconds|milliseconds|seconds|minutes|hours|days]!",
    },
    # HDB v2.0.0:src/proxy/src/limiter.rs BlockRule, #[serde(tag = "type", content = "content")]
    # (904e2d5e #1420). Its QueryRange(i64) variant is left out on purpose: its content is read by
    # `deserialize_readable_duration`, which deserializes a borrowed `&str`; toml 0.7.3/toml_edit
    # 0.19.8 (HDB v2.0.0:Cargo.lock) only hand out owned strings (`visit_string`), which serde's
    # `&str` refuses ("expected a borrowed string"), so no config file can select it (read, not run).
    "BlockRule": Tagged(
        "type",
        {"QueryWithoutPredicate": {}, "AnyQuery": {}, "AnyInsert": {}},
    ),
}

# HDB v1.2.2:remote_engine_client/src/config.rs Config (#[serde(default)])
_REMOTE_ENGINE_CLIENT: Final[Table] = {
    "connect_timeout": "duration",
    "channel_pool_max_size_per_partition": "usize",
    "channel_pool_partition_num": "usize",
    "channel_keep_alive_while_idle": "bool",
    "channel_keep_alive_timeout": "duration",
    "channel_keep_alive_interval": "duration",
    "route_cache_max_size_per_partition": "usize",
    "route_cache_partition_num": "usize",
}

# HDB v1.2.2:components/table_kv/src/config.rs ObkvConfig and ClientConfig (both #[serde(default)]);
# ObLogLevel has rename_all = "lowercase"
_OBKV: Final[Table] = {
    "full_user_name": "str",
    "param_url": "str",
    "password": "str",
    "check_batch_result_num": "bool",
    "enable_purge_recyclebin": "bool",
    "max_create_table_retries": "usize",
    "create_table_retry_interval": "duration",
    "client": {
        "sys_user_name": "str",
        "sys_password": "str",
        "metadata_refresh_interval": "duration",
        "ocp_model_cache_file": "str",
        "rslist_acquire_timeout": "duration",
        "rslist_acquire_try_times": "usize",
        "rslist_acquire_retry_interval": "duration",
        "table_entry_acquire_connect_timeout": "duration",
        "table_entry_acquire_read_timeout": "duration",
        "table_entry_refresh_interval_base": "duration",
        "table_entry_refresh_interval_ceiling": "duration",
        "table_entry_refresh_try_times": "usize",
        "table_entry_refresh_try_interval": "duration",
        "table_entry_refresh_continuous_failure_ceiling": "usize",
        "server_address_priority_timeout": "duration",
        "runtime_continuous_failure_ceiling": "usize",
        "rpc_connect_timeout": "duration",
        "rpc_read_timeout": "duration",
        "rpc_operation_timeout": "duration",
        "rpc_login_timeout": "duration",
        "rpc_retry_limit": "usize",
        "rpc_retry_interval": "duration",
        "refresh_workers_num": "usize",
        "max_conns_per_server": "usize",
        "min_idle_conns_per_server": "usize",
        "conn_init_thread_num": "usize",
        "metadata_mysql_conn_pool_max_size": "usize",
        "metadata_mysql_conn_pool_min_size": "usize",
        "table_batch_op_thread_num": "usize",
        "query_concurrency_limit": "usize",
        "log_level_flag": "enum[none|error|warn|info|trace|debug]",
    },
}

_DB_1_2_2: Final[Table] = {
    # HDB v1.2.2:src/config.rs Config: #[serde(default, deny_unknown_fields)]
    # HDB v1.2.2:src/config.rs NodeInfo (#[serde(default)])
    "node": {"addr": "str", "zone": "str", "idc": "str", "binary_version": "str"},
    # HDB v1.2.2:server/src/config.rs ServerConfig (#[serde(default)])
    "server": {
        "bind_addr": "str",
        "mysql_port": "u16",
        "http_port": "u16",
        "grpc_port": "u16",
        "timeout": "duration",
        "http_max_body_size": "size",
        "grpc_server_cq_count": "usize",
        "resp_compress_min_length": "size",
        # HDB v1.2.2:proxy/src/forward.rs Config (#[serde(default)])
        "forward": {
            "keep_alive_interval": "duration",
            "keep_alive_timeout": "duration",
            "keep_alive_while_idle": "bool",
            "connect_timeout": "duration",
            "forward_timeout": "duration",
        },
        "auto_create_table": "bool",
        # HDB v1.2.2:cluster/src/config.rs SchemaConfig (#[serde(default)])
        "default_schema_config": {"default_engine_type": "str", "default_timestamp_column_name": "str"},
        # HDB v1.2.2:router/src/lib.rs RouteCacheConfig: no #[serde(default)], so all four are required
        # once the table is present (every version up to 2.0.0)
        "route_cache": {"enable": "bool!", "ttl": "duration!", "tti": "duration!", "capacity": "u64!"},
        # HDB v1.2.2:proxy/src/hotspot.rs Config (#[serde(default)]); dump_interval is a
        # std::time::Duration, which serde reads as {secs, nanos} and whose unknown keys are fatal
        "hotspot": {
            "query_cap": "usize",
            "write_cap": "usize",
            "dump_interval": {"secs": "u64!", "nanos": "u32!"},
            "auto_dump_interval": "bool",
            "auto_dump_len": "usize",
        },
    },
    # HDB v1.2.2:src/config.rs RuntimeConfig (#[serde(default)])
    "runtime": {
        "read_thread_num": "usize",
        "write_thread_num": "usize",
        "meta_thread_num": "usize",
        "compact_thread_num": "usize",
        "default_thread_num": "usize",
        "io_thread_num": "usize",
    },
    # HDB v1.2.2:components/logger/src/lib.rs Config (#[serde(default)])
    "logger": {"level": "str", "enable_async": "bool", "async_channel_len": "i32"},
    # HDB v1.2.2:components/tracing_util/src/logging.rs Config; `console` is Option<ConsoleConfig>,
    # whose `port` has no default
    "tracing": {"prefix": "str", "dir": "str", "level": "str", "console": {"port": "u16!"}},
    # HDB v1.2.2:analytic_engine/src/lib.rs Config (#[serde(default)])
    "analytic": {
        # HDB v1.2.2:analytic_engine/src/storage_options.rs StorageOptions (#[serde(default)])
        "storage": {
            "mem_cache_capacity": "size",
            "mem_cache_partition_bits": "usize",
            "disk_cache_capacity": "size",
            "disk_cache_page_size": "size",
            "disk_cache_dir": "str",
            # ObjectStoreOptions, #[serde(tag = "type")]; LocalOptions/AliyunOptions have no default
            "object_store": Tagged(
                "type",
                {
                    "Local": {"data_dir": "str!"},
                    "Aliyun": {
                        "key_id": "str!",
                        "key_secret": "str!",
                        "endpoint": "str!",
                        "bucket": "str!",
                        "prefix": "str!",
                        "pool_max_idle_per_host": "usize",
                        "timeout": "duration",
                        "keep_alive_timeout": "duration",
                        "keep_alive_interval": "duration",
                    },
                },
            ),
        },
        "replay_batch_size": "usize",
        "max_replay_tables_per_batch": "usize",
        # HDB v1.2.2:analytic_engine/src/table_options.rs TableOptions (#[serde(default)]);
        # StorageFormatHint is Auto | Specific(StorageFormat); CompactionStrategy is in compaction/mod.rs
        "table_opts": {
            "segment_duration": "duration",
            "update_mode": "enum[Overwrite|Append]",
            "storage_format_hint": "enum[Auto|Specific=enum[Columnar|Hybrid]]",
            "enable_ttl": "bool",
            "ttl": "duration",
            "arena_block_size": "u32",
            "write_buffer_size": "u32",
            "compaction_strategy": (
                "enum[Default|TimeWindow=@TimeWindowCompactionOptions|SizeTiered=@SizeTieredCompactionOptions]"
            ),
            "num_rows_per_row_group": "usize",
            "compression": "enum[Uncompressed|Lz4|Snappy|Zstd]",
        },
        # HDB v1.2.2:analytic_engine/src/compaction/scheduler.rs SchedulerConfig (#[serde(default)])
        "compaction": {
            "schedule_channel_len": "usize",
            "schedule_interval": "duration",
            "max_ongoing_tasks": "usize",
            "max_unflushed_duration": "duration",
            "memory_limit": "size",
            "max_pending_compaction_tasks": "usize",
        },
        "sst_meta_cache_cap": "usize",
        "sst_data_cache_cap": "usize",
        # HDB v1.2.2:analytic_engine/src/manifest/details.rs Options: no #[serde(default)], so all four
        # are required once [analytic.manifest] is present
        "manifest": {
            "snapshot_every_n_updates": "usize!",
            "scan_timeout": "duration!",
            "scan_batch_size": "usize!",
            "store_timeout": "duration!",
        },
        "max_rows_in_write_queue": "usize",
        "space_write_buffer_size": "usize",
        "db_write_buffer_size": "usize",
        "preflush_write_buffer_size_ratio": "f32",
        "scan_batch_size": "usize",
        "scan_max_record_batches_in_flight": "usize",
        "sst_background_read_parallelism": "usize",
        "write_sst_max_buffer_size": "size",
        "max_retry_flush_limit": "usize",
        "max_bytes_per_write_batch": "size",
        # WalStorageConfig, #[serde(tag = "type")]; RocksDBConfig, ObkvWalConfig, KafkaWalConfig and
        # their namespace structs all #[serde(default)]
        "wal": Tagged(
            "type",
            {
                "RocksDB": {
                    "data_dir": "str",
                    # HDB v1.2.2:wal/src/rocks_impl/config.rs Config
                    "data_namespace": {"max_background_jobs": "i32", "enable_statistics": "bool"},
                    "meta_namespace": {"max_background_jobs": "i32", "enable_statistics": "bool"},
                },
                "Obkv": {
                    "obkv": _OBKV,
                    # WalNamespaceConfig
                    "data_namespace": {
                        "shard_num": "usize",
                        "meta_shard_num": "usize",
                        "ttl": "duration",
                        "init_scan_timeout": "duration",
                        "init_scan_batch_size": "i32",
                    },
                    # ManifestNamespaceConfig
                    "meta_namespace": {
                        "shard_num": "usize",
                        "meta_shard_num": "usize",
                        "init_scan_timeout": "duration",
                        "init_scan_batch_size": "i32",
                        "clean_scan_timeout": "duration",
                        "clean_scan_batch_size": "usize",
                    },
                },
                "Kafka": {
                    # HDB v1.2.2:components/message_queue/src/kafka/config.rs Config (#[serde(default)])
                    "kafka": {
                        "client": {"boost_broker": "str", "max_message_size": "usize", "socks5_proxy": "str"},
                        "topic_management": {
                            "create_replication_factor": "i16",
                            "create_max_wait_ms": "i32",
                            "delete_max_wait_ms": "i32",
                        },
                        "consumer": {"max_wait_ms": "i32", "min_batch_size": "i32", "max_batch_size": "i32"},
                    },
                    # HDB v1.2.2:wal/src/message_queue_impl/config.rs Config
                    "data_namespace": {"clean_period": "duration"},
                    "meta_namespace": {"clean_period": "duration"},
                },
            },
        ),
        "remote_engine_client": _REMOTE_ENGINE_CLIENT,
    },
    # HDB v1.2.2:query_engine/src/config.rs Config (#[serde(default)])
    "query_engine": {"read_parallelism": "usize"},
    # HDB v1.2.2:src/config.rs ClusterDeployment, #[serde(tag = "mode")], an Option in Config
    "cluster_deployment": Tagged(
        "mode",
        {
            # HDB v1.2.2:server/src/config.rs StaticRouteConfig, StaticTopologyConfig; router RuleList
            "NoMeta": {
                "rules": {"prefix_rules": "list[@PrefixRule]", "hash_rules": "list[@HashRule]"},
                "topology": {"schema_shards": "list[@SchemaShardView]"},
            },
            # HDB v1.2.2:cluster/src/config.rs ClusterConfig, EtcdClientConfig;
            # meta_client/src/meta_impl.rs MetaClientConfig (all #[serde(default)])
            "WithMeta": {
                "cmd_channel_buffer_size": "usize",
                "meta_client": {
                    "cluster_name": "str",
                    "meta_addr": "str",
                    "lease": "duration",
                    "timeout": "duration",
                    "cq_count": "usize",
                },
                "etcd_client": {
                    "server_addrs": "list[str]",
                    "root_path": "str",
                    "connect_timeout": "duration",
                    "shard_lock_lease_ttl_sec": "u64",
                    "shard_lock_lease_check_interval": "duration",
                },
            },
        },
    ),
    # HDB v1.2.2:proxy/src/limiter.rs LimiterConfig (#[serde(default)]), BlockRule unit variants
    "limiter": {
        "write_block_list": "list[str]",
        "read_block_list": "list[str]",
        "rules": "list[enum[QueryWithoutPredicate|AnyQuery|AnyInsert]]",
    },
}


def _copy(node: Node) -> Node:
    if isinstance(node, dict):
        return {k: _copy(v) for k, v in node.items()}
    if isinstance(node, Tagged):
        return Tagged(node.tag, {k: _table(_copy(v)) for k, v in node.variants.items()}, node.required)
    return node


def _table(node: Node) -> Table:
    assert isinstance(node, dict)
    return node


def _at(table: Table, dotted: str) -> Table:
    """The sub-table at `dotted`; a segment "wal:RocksDB" enters that variant of a Tagged."""
    node: Node = table
    for segment in dotted.split("."):
        name, _, variant = segment.partition(":")
        parent = _table(node)
        node = parent[name] if name in parent else parent[name + "!"]
        if variant:
            assert isinstance(node, Tagged)
            node = node.variants[variant]
    return _table(node)


def _tagged(table: Table, dotted: str) -> Tagged:
    parent, _, name = dotted.rpartition(".")
    node = (_at(table, parent) if parent else table)[name]
    assert isinstance(node, Tagged)
    return node


def _build_db() -> dict[Version, Table]:
    v122 = _table(_copy(_DB_1_2_2))

    v124 = _table(_copy(v122))
    # 1.2.4: HDB 986732db (#980) components/message_queue/src/kafka/config.rs: boost_broker (one
    # string) becomes boost_brokers (a list); e3b4009c (#1005) adds the retry fields to Config.
    kafka = _at(v124, "analytic.wal:Kafka.kafka")
    del _at(kafka, "client")["boost_broker"]
    _at(kafka, "client")["boost_brokers"] = "list[str]"
    kafka.update(
        retry_interval_factor="f64",
        init_retry_interval="duration",
        max_retry_interval="duration",
        max_retry="usize",
    )
    # 1.2.4: storage options move to components/object_store/src/config.rs. 25899ebe (#974) adds
    # disk_cache_partition_bits; eba2293b (#969) adds S3 and moves the Aliyun HTTP settings into
    # `http`/`retry` (each #[serde(default)] as a field, but HttpOptions/RetryOptions have no struct
    # default: all their keys are required once the table is present); 96fc8abe (#887) adds Obkv,
    # whose `client: ObkvConfig` has no default (required table).
    storage = _at(v124, "analytic.storage")
    storage["disk_cache_partition_bits"] = "usize"
    http: Table = {
        "pool_max_idle_per_host": "usize!",
        "timeout": "duration!",
        "keep_alive_timeout": "duration!",
        "keep_alive_interval": "duration!",
    }
    retry: Table = {"max_retries": "usize!", "retry_timeout": "duration!"}
    cloud: Table = {
        "key_id": "str!",
        "key_secret": "str!",
        "endpoint": "str!",
        "bucket": "str!",
        "prefix": "str!",
    }
    _tagged(v124, "analytic.storage.object_store").variants.update(
        Aliyun={**cloud, "http": http, "retry": retry},
        Obkv={
            "prefix": "str!",
            "shard_num": "usize",
            "part_size": "size",
            "max_object_size": "size",
            "upload_parallelism": "usize",
            "client!": _table(_copy(_OBKV)),
        },
        S3={"region": "str!", **cloud, "http": _copy(http), "retry": _copy(retry)},
    )
    # 1.2.4: 1fd17f3d (#976) analytic_engine/src/lib.rs adds recover_mode (RecoverMode, unit variants).
    _at(v124, "analytic")["recover_mode"] = "enum[TableBased|ShardBased]"
    # 1.2.4: b11574cf (#948) server/src/config.rs adds remote_client; remote_engine_client/src/config.rs
    # adds `compression` (arrow_ext CompressOptions: no struct default, both keys required).
    compression: Table = {"compress_min_length": "usize!", "method": "enum[None|Zstd]!"}
    _at(v124, "analytic.remote_engine_client")["compression"] = compression
    _at(v124, "server")["remote_client"] = _copy(_at(v124, "analytic.remote_engine_client"))

    v125 = _table(_copy(v124))
    # 1.2.5: 838a6fd4 (#1076) analytic_engine/src/manifest/details.rs Options gains #[serde(default)];
    # snapshot_every_n_updates becomes NonZeroUsize.
    _at(v125, "analytic")["manifest"] = {
        "snapshot_every_n_updates": "nonzero[usize]",
        "scan_timeout": "duration",
        "scan_batch_size": "usize",
        "store_timeout": "duration",
    }
    # 1.2.5: a26988b0 (#1069) adds analytic.num_streams_to_prefetch; 1607d1d3 (#1100) adds
    # server.enable_query_dedup; d2c8139e (#1033) wal/src/rocks_impl/config.rs exposes RocksDB options.
    _at(v125, "analytic")["num_streams_to_prefetch"] = "usize"
    _at(v125, "server")["enable_query_dedup"] = "bool"
    rocks_ns: Table = {
        "max_subcompactions": "u32",
        "max_background_jobs": "i32",
        "enable_statistics": "bool",
        "write_buffer_size": "size",
        "max_write_buffer_number": "i32",
        "level_zero_file_num_compaction_trigger": "i32",
        "level_zero_slowdown_writes_trigger": "i32",
        "level_zero_stop_writes_trigger": "i32",
        "fifo_compaction_max_table_files_size": "size",
    }
    _at(v125, "analytic.wal:RocksDB").update(data_namespace=rocks_ns, meta_namespace=_copy(rocks_ns))

    v126 = _table(_copy(v125))
    # 1.2.6: 2bfcd421 (#1138) adds server.postgresql_port; 3515e5d7 (#1182) adds
    # server.sub_table_access_perm (proxy/src/lib.rs SubTableAccessPerm: no serde default yet).
    _at(v126, "server").update(
        postgresql_port="u16", sub_table_access_perm={"enable_http": "bool!", "enable_others": "bool!"}
    )
    # 1.2.6: cfe178a8 (#1127) proxy/src/hotspot.rs: dump_interval/auto_dump_interval/auto_dump_len
    # become enable_auto_dump/auto_dump_interval (ReadableDuration)/auto_dump_num_items.
    _at(v126, "server")["hotspot"] = {
        "query_cap": "usize",
        "write_cap": "usize",
        "enable_auto_dump": "bool",
        "auto_dump_interval": "duration",
        "auto_dump_num_items": "usize",
    }
    # 1.2.6: 62d38355 (#1129) both Obkv WAL namespaces gain bucket_create_parallelism.
    for ns in ("data_namespace", "meta_namespace"):
        _at(v126, f"analytic.wal:Obkv.{ns}")["bucket_create_parallelism"] = "usize"
    # 1.2.6: ee54c5c3 (#1164) table_opts.memtable_type; 06e985f9 (#1172) drops StorageFormat::Hybrid.
    opts = _at(v126, "analytic.table_opts")
    opts["storage_format_hint"] = "enum[Auto|Specific=enum[Columnar]]"
    opts["memtable_type"] = "enum[SkipList|Columnar]"

    v127 = _table(_copy(v126))
    # 1.2.7: 8a3a22e7 (#1125) server/src/config.rs: enable_query_dedup becomes [server.query_dedup];
    # 75894ee5 (#1209) gives SubTableAccessPerm #[serde(default)].
    server = _at(v127, "server")
    del server["enable_query_dedup"]
    server["query_dedup"] = {"enable": "bool", "notify_timeout": "duration", "notify_queue_cap": "usize"}
    server["sub_table_access_perm"] = {"enable_http": "bool", "enable_others": "bool"}
    # 1.2.7: 6d0c2b98 (#1235) logger slow/failed query paths; analytic.metrics (MetricsOptions).
    _at(v127, "logger").update(slow_query_path="str", failed_query_path="str")
    _at(v127, "analytic")["metrics"] = {"enable_table_level_metrics": "bool"}

    v200 = _table(_copy(v127))
    # 2.0.0: HDB v2.0.0:src/horaedb/src/config.rs RuntimeConfig: 312c6a34 (#1305), ce4044b8 (#1303).
    _at(v200, "runtime").update(read_thread_stack_size="size", low_read_thread_num="usize")
    # 2.0.0: src/query_engine/src/config.rs expensive_query_threshold (ce4044b8 #1303);
    # src/remote_engine_client/src/config.rs max_retry, retry_interval (both copies of the struct).
    _at(v200, "query_engine")["expensive_query_threshold"] = "duration"
    for where in ("analytic.remote_engine_client", "server.remote_client"):
        _at(v200, where).update(max_retry="usize", retry_interval="duration")
    # 2.0.0: src/cluster/src/config.rs EtcdClientConfig: tls (TlsConfig, c3280577 #1254) and
    # enable_shard_lock_fast_reacquire (4c66a3f1 #1251).
    _at(v200, "cluster_deployment:WithMeta.etcd_client").update(
        tls={
            "enable": "bool",
            "domain": "str",
            "ca_cert_path": "str",
            "client_key_path": "str",
            "client_cert_path": "str",
        },
        enable_shard_lock_fast_reacquire="bool",
    )
    # 2.0.0: src/proxy/src/limiter.rs BlockRule becomes adjacently tagged (904e2d5e #1420).
    _at(v200, "limiter")["rules"] = "list[@BlockRule]"
    # 2.0.0: src/analytic_engine/src/lib.rs Config: 53df95ac (#1271), 1df984c2 (#1243), 3f5d8f45
    # (#1388), a03ec2a0 (#1278); wal_encode is WalEncodeConfig (4860cd43 #1179), no struct default.
    _at(v200, "analytic").update(
        mutable_segment_switch_threshold="size",
        enable_primary_key_sampling="bool",
        min_flush_interval="duration",
        mem_usage_sampling_interval="duration",
        wal_encode={"num_bytes_compress_threshold": "size!", "format": "enum[RowWise|Columnar]!"},
    )
    # 2.0.0: src/wal/src/config.rs Config = #[serde(flatten)] StorageConfig (still tag "type", variants
    # RocksDB | Obkv | Kafka; "Local" arrives only in v2.1.0) + disable_data (046cdd35 #1311).
    for variant in _tagged(v200, "analytic.wal").variants.values():
        variant["disable_data"] = "bool"
    # 2.0.0: 53df95ac (#1271) src/analytic_engine/src/memtable/mod.rs: MemtableType::Columnar is
    # renamed Column; TableOptions gains layered_memtable_opts (LayeredMemtableOptions, serde default).
    opts = _at(v200, "analytic.table_opts")
    opts["memtable_type"] = "enum[SkipList|Column]"
    opts["layered_memtable_opts"] = {"mutable_segment_switch_threshold": "size"}

    return {
        (1, 2, 2): v122,
        (1, 2, 4): v124,
        (1, 2, 5): v125,
        (1, 2, 6): v126,
        (1, 2, 7): v127,
        (2, 0, 0): v200,
    }


# ==================================================================================================
# Data: CeresMeta / HoraeMeta. Go int is 64-bit ("i64"), uint "u64".
# ==================================================================================================

# META v1.2.2:pkg/log/config.go Config: `File` has no toml tag, go-toml matches it by field name.
_META_LOG: Final[Table] = {"level": "str", "file": "str"}

# META v1.2.2:server/config/config.go Config (go-toml v2 v2.0.6 Unmarshal: unknown keys ignored)
_META_1_2_2: Final[Table] = {
    "log": _META_LOG,
    "etcd-log": _META_LOG,
    # META v1.2.2:server/config/config.go LimiterConfig
    "flow-limiter": {"limit": "i64", "burst": "i64", "enable": "bool"},
    "grpc-handle-timeout-ms": "i64",
    "etcd-start-timeout-ms": "i64",
    "etcd-call-timeout-ms": "i64",
    "etcd-max-txn-ops": "i64",
    "lease-sec": "i64",
    "node-name": "str",
    "data-dir": "str",
    "storage-root-path": "str",
    "initial-cluster": "str",
    "initial-cluster-state": "str",
    "initial-cluster-token": "str",
    "tick-interval-ms": "i64",
    "election-timeout-ms": "i64",
    "quota-backend-bytes": "i64",
    "auto-compaction-mode": "str",
    "auto-compaction-retention": "str",
    "max-request-bytes": "u64",
    "max-scan-limit": "i64",
    "min-scan-limit": "i64",
    "id-allocator-step": "u64",
    "default-cluster-name": "str",
    "default-cluster-node-count": "i64",
    "default-cluster-replication-factor": "i64",
    "default-cluster-shard-total": "i64",
    "enable-schedule": "bool",
    "topology-type": "str",
    "client-urls": "str",
    "peer-urls": "str",
    "advertise-client-urls": "str",
    "advertise-peer-urls": "str",
    "default-http-port": "i64",
}


def _build_meta() -> dict[Version, Table]:
    v122 = _table(_copy(_META_1_2_2))
    # 1.2.4: META 2200761 (#205) adds procedure-executing-batch-size (uint32). 1.2.5, 1.2.6: unchanged.
    v124 = _table(_copy(v122))
    v124["procedure-executing-batch-size"] = "u32"
    # 1.2.7: META bdd40e6 (#238, "support external etcd"): default-http-port is renamed http-port;
    # adds enable-embed-etcd, addr, grpc-port and the grpc-service-* keys (Go int).
    v127 = _table(_copy(v124))
    del v127["default-http-port"]
    v127.update(
        {
            "enable-embed-etcd": "bool",
            "grpc-service-max-send-msg-size": "i64",
            "grpc-service-max-recv-msg-size": "i64",
            "grpc-service-keep-alive-ping-min-interval-sec": "i64",
            "addr": "str",
            "http-port": "i64",
            "grpc-port": "i64",
        }
    )
    # 2.0.0: HDB v2.0.0:horaemeta/server/config/config.go: etcd TLS paths (META 3f81056 #250, after
    # v1.2.7), max-ops-per-txn (META 4c1e54b); default-cluster-replication-factor removed.
    v200 = _table(_copy(v127))
    del v200["default-cluster-replication-factor"]
    v200.update(
        {
            "etcd-ca-cert-path": "str",
            "etcd-key-path": "str",
            "etcd-cert-path": "str",
            "max-ops-per-txn": "i64",
        }
    )
    return {
        (1, 2, 2): v122,
        (1, 2, 4): v124,
        (1, 2, 5): v124,
        (1, 2, 6): v124,
        (1, 2, 7): v127,
        (2, 0, 0): v200,
    }


_DB: Final[dict[Version, Table]] = _build_db()
_META: Final[dict[Version, Table]] = _build_meta()


def db_schema(version: tuple[int, int, int]) -> Table:
    """The whole CeresDB/HoraeDB server config (top-level `Config`) at `version` (a fresh copy)."""
    if version not in _DB:
        raise ValueError(f"no CeresDB/HoraeDB schema for {version}; known: {sorted(_DB)}")
    return _table(_copy(_DB[version]))


def meta_schema(version: tuple[int, int, int]) -> Table:
    """The whole CeresMeta/HoraeMeta config at `version` (a fresh copy)."""
    if version not in _META:
        raise ValueError(f"no CeresMeta/HoraeMeta schema for {version}; known: {sorted(_META)}")
    return _table(_copy(_META[version]))


# ==================================================================================================
# The checker
# ==================================================================================================

_INT_RANGES: Final[dict[str, tuple[int, int]]] = {
    **{f"u{b}": (0, 2**b - 1) for b in (8, 16, 32, 64)},
    **{f"i{b}": (-(2 ** (b - 1)), 2 ** (b - 1) - 1) for b in (8, 16, 32, 64)},
    "usize": (0, 2**64 - 1),
    "isize": (-(2**63), 2**63 - 1),
}
_SIZE_UNITS: Final = frozenset(
    {"K", "KB", "KiB", "M", "MB", "MiB", "G", "GB", "GiB", "T", "TB", "TiB"} | {"P", "PB", "PiB", "B", ""}
)
# Rust's `str::parse::<f64>` grammar (core::num::dec2flt).
_RUST_F64: Final = re.compile(
    r"[+-]?(?:inf|infinity|nan|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?)", re.I
)
_DURATION_UNITS: Final[dict[str, int]] = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000}
_DURATION_HELP: Final = "only d, h, m, s, ms are supported, in that order"
_DESCRIPTIONS: Final[dict[str, str]] = {
    "str": "a string",
    "bool": "a boolean",
    "f32": "a number",
    "f64": "a number",
    "duration": 'a string like "5s" or "1h30m"; lowercase d, h, m, s, ms; not an integer',
    "size": 'a non-negative integer of bytes or a string like "64MB"',
}


def _rust_f64(text: str) -> float | None:
    return float(text) if _RUST_F64.fullmatch(text) else None


def duration_error(text: str) -> str | None:
    """Why `ReadableDuration::from_str` (HDB components/time_ext) refuses `text`, or None."""
    text = text.strip()
    if not text.isascii():
        return "not ASCII"
    left, last_unit, total = text, 86_400_000 + 1, 0.0
    while (idx := next((i for i, c in enumerate(left) if c in "dhms"), -1)) >= 0:
        number = left[:idx]
        if left[idx:].startswith("ms"):
            unit, left = 1, left[idx + 2 :]
        else:
            unit, left = _DURATION_UNITS[left[idx]], left[idx + 1 :]
        if unit >= last_unit:
            return "d, h, m, s, ms should occur in given order"
        value = _rust_f64(number.strip())
        if value is None:
            return _DURATION_HELP
        total, last_unit = total + value * unit, unit
    if left:
        return _DURATION_HELP
    if math.copysign(1.0, total) < 0:
        return "duration should be positive"
    return None


def size_error(text: str) -> str | None:
    """Why `ReadableSize::from_str` (HDB components/size_ext) refuses `text`, or None."""
    text = text.strip()
    if not text:
        return "empty"
    if not text.isascii():
        return "not ASCII"
    n = 0
    while n < len(text) and text[n] in "0123456789.eE-+":
        n += 1
    if text[n:].strip() not in _SIZE_UNITS:
        return "only B, KB, KiB, MB, MiB, GB, GiB, TB, TiB, PB, and PiB are supported"
    return None if _rust_f64(text[:n]) is not None else "invalid size number"


def _split_alternatives(body: str) -> list[str]:
    parts: list[str] = []
    depth = start = 0
    for i, c in enumerate(body):
        depth += (c == "[") - (c == "]")
        if c == "|" and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    return parts


def _got(value: object) -> str:
    if isinstance(value, bool):
        return f"a boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"an integer {value}"
    if isinstance(value, float):
        return f"a float {value}"
    if isinstance(value, str):
        return f'a string "{value[:60]}"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"


def _describe(token: str) -> str:
    if token in _INT_RANGES:
        low, high = _INT_RANGES[token]
        return f"an integer {low}..{high}"
    if token.startswith("nonzero["):
        return f"{_describe(token[8:-1])}, not 0"
    if token.startswith("enum["):
        return "one of " + ", ".join(_split_alternatives(token[5:-1]))
    return _DESCRIPTIONS.get(token, token)


def _scalar_problem(value: object, token: str) -> str | None:
    """None if `value` is acceptable for the scalar `token`, else why not."""
    reason: str | None = None
    if token == "str":
        ok = isinstance(value, str)
    elif token == "bool":
        ok = isinstance(value, bool)
    elif token in ("f32", "f64"):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif token in _INT_RANGES or token.startswith("nonzero["):
        inner = token[8:-1] if token.startswith("nonzero[") else token
        low, high = _INT_RANGES.get(inner, (0, -1))
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        ok = ok and (value != 0 or inner == token)
    elif token == "duration":
        ok = isinstance(value, str) and (reason := duration_error(value)) is None
    elif token == "size":
        if isinstance(value, str):
            ok = (reason := size_error(value)) is None
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    else:
        return f"unknown type token {token!r} in the schema"
    if ok:
        return None
    return f"expected {token} ({_describe(token)}), got {_got(value)}" + (f": {reason}" if reason else "")


def _join(path: str, key: object) -> str:
    """A key path as problems name keys: a key that is not bare is quoted ("a.b" is one key)."""
    return f"{path}.{key_segment(key)}" if path else key_segment(key)


_SEGMENT: Final = re.compile(r'"(?:[^"\\]|\\.)*"|[^."]+')


def path_keys(path: str) -> list[str]:
    """The keys of a path `_join` wrote, unquoted (an index such as `[0]` stays on its key)."""
    return [json.loads(m) if m.startswith('"') else m for m in _SEGMENT.findall(path)]


class _Checker:
    def __init__(self) -> None:
        self.out: list[Violation] = []

    def type_error(self, path: str, message: str, expected: str) -> None:
        self.out.append(Violation(path, "type", message, expected))

    def node(self, value: object, node: Node, path: str) -> None:
        if isinstance(node, Tagged):
            self.tagged(value, node, path)
        elif isinstance(node, dict):
            if isinstance(value, dict):
                self.table(value, node, path)
            else:
                self.type_error(path, f"expected a table, got {_got(value)}", "table")
        else:
            self.leaf(value, node.removesuffix("!"), path)

    def leaf(self, value: object, token: str, path: str) -> None:
        if token == "any":  # nothing to check
            return
        if token.startswith("@"):
            target = NAMED.get(token[1:])
            if target is None:
                self.type_error(path, f"unknown reference {token!r} in the schema", token)
            else:
                self.node(value, target, path)
        elif token.startswith(("list[", "map[")):
            inner = token[token.index("[") + 1 : -1]
            if token.startswith("list[") and isinstance(value, list):
                for i, item in enumerate(value):
                    self.leaf(item, inner, f"{path}[{i}]")
            elif token.startswith("map[") and isinstance(value, dict):
                for key, item in value.items():
                    self.leaf(item, inner, _join(path, key))
            else:
                kind = "an array" if token.startswith("list[") else "a table"
                self.type_error(path, f"expected {token} ({kind}), got {_got(value)}", token)
        elif token.startswith("enum["):
            self.enum(value, token, path)
        elif (problem := _scalar_problem(value, token)) is not None:
            self.type_error(path, problem, token)

    def enum(self, value: object, token: str, path: str) -> None:
        units: list[str] = []
        payloads: dict[str, str] = {}
        for alternative in _split_alternatives(token[5:-1]):
            name, sep, payload = alternative.partition("=")
            if sep:
                payloads[name] = payload
            else:
                units.append(name)
        if isinstance(value, str) and value in units:
            return
        if isinstance(value, dict) and len(value) == 1:
            ((key, inner),) = value.items()
            if key in payloads:
                self.leaf(inner, payloads[key], _join(path, key))
                return
            if key in units and inner == {}:
                return
        accepted = [f'"{u}"' for u in units] + [f"{{{p} = ...}}" for p in payloads]
        self.type_error(path, f"expected one of {', '.join(accepted)}, got {_got(value)}", token)

    def tagged(self, value: object, node: Tagged, path: str) -> None:
        expected = f"enum[{'|'.join(node.variants)}]"
        if not isinstance(value, dict):
            self.type_error(
                path, f"expected a table with {node.tag} = {expected}, got {_got(value)}", expected
            )
            return
        accepted = ", ".join(f'"{v}"' for v in node.variants)
        tag_path = _join(path, node.tag)
        if node.tag not in value:
            self.type_error(
                tag_path, f"the tag {node.tag!r} is missing; it must be one of {accepted}", expected
            )
            return
        chosen = value[node.tag]
        if not isinstance(chosen, str) or chosen not in node.variants:
            self.type_error(tag_path, f"expected one of {accepted}, got {_got(chosen)}", expected)
            return
        self.table(value, node.variants[chosen], path, skip=node.tag)

    def table(self, value: dict[object, object], schema: Table, path: str, skip: str | None = None) -> None:
        fields: dict[str, tuple[Node, bool]] = {}
        for schema_key, node in schema.items():
            name, required = schema_key.removesuffix("!"), schema_key.endswith("!")
            required = required or (isinstance(node, str) and node.endswith("!"))
            required = required or (isinstance(node, Tagged) and node.required)
            fields[name] = (node, required)
        for key, item in value.items():
            if key == skip:
                continue
            if not isinstance(key, str) or key not in fields:
                refused = not path and "analytic" in fields and "cluster_deployment" in fields
                message = (
                    "unknown top-level key (the server refuses it: deny_unknown_fields, exit 101)"
                    if refused
                    else "unknown key (the server ignores it)"
                )
                self.out.append(Violation(_join(path, key), "unknown", message))
                continue
            self.node(item, fields[key][0], _join(path, key))
        for name, (node, required) in fields.items():
            if required and name not in value:
                if isinstance(node, str):
                    expected, what = node.removesuffix("!"), "key"
                elif isinstance(node, Tagged):
                    expected, what = f"table with {node.tag} = enum[{'|'.join(node.variants)}]", "table"
                else:
                    expected, what = "table", "table"
                self.out.append(
                    Violation(_join(path, name), "missing", f"required {what} is missing", expected)
                )


def check(document: dict[str, object], schema: Table) -> list[Violation]:
    """Every unknown key, wrong type and missing required key of a parsed TOML `document`.

    Document order first (depth first), then the missing keys of each table in schema order.
    Never raises, whatever the shape of `document`.
    """
    checker = _Checker()
    checker.node(document, schema, "")
    return checker.out
