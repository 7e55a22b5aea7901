"""The rules of a desired-state file that types alone cannot express (README, The desired-state file).

Pure. `check` returns every problem (and warning) with the dotted key path of the offending value:
unique names, ports per machine, an odd meta count, lease and shard-lock limits, version-gated
keys, the keys the supervisor derives or the servers would silently ignore, data directories.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

from ceres_supervisor.desired import rendering, serverschema
from ceres_supervisor.model import versions
from ceres_supervisor.model.addresses import machine_of, parse_listen
from ceres_supervisor.model.errors import Problem
from ceres_supervisor.model.spec import (
    LEASE_MAX_S,
    SHARD_LOCK_TTL_MIN,
    DesiredState,
    config_tables,
    key_segment,
    nodes,
)

_PORT_KEYS: Final = {
    "client": "client_port",
    "peer": "peer_port",
    "http": "http_port",
    "grpc": "grpc_port",
    "mysql": "mysql_port",
    "postgresql": "postgresql_port",
}


# --- rules beyond types ------------------------------------------------------------------------

# Keys of the rendered files that the supervisor derives; a `config` table may not set them.
META_OWNED_KEYS: Final[dict[str, str]] = {
    "node-name": "meta.nodes[].name",
    "data-dir": "the supervisor (the node's data directory)",
    "initial-cluster": "meta.nodes",
    "client-urls": "meta.nodes[].client_port",
    "peer-urls": "meta.nodes[].peer_port",
    "advertise-client-urls": "meta.nodes[].host and client_port",
    "advertise-peer-urls": "meta.nodes[].host and peer_port",
    "default-cluster-name": "cluster.name",
    "default-cluster-node-count": "the number of [[ceresdb.nodes]]",
    "default-cluster-shard-total": "meta.shard_total",
    "topology-type": "meta.topology",
    "storage-root-path": "cluster.flavor and cluster.keep_ceresdb_data",
    "default-http-port": "meta.nodes[].http_port",
    "http-port": "meta.nodes[].http_port",
}
DB_OWNED_KEYS: Final[dict[str, str]] = {
    "node.addr": "ceresdb.nodes[].host",
    "server.bind_addr": "the supervisor (always 0.0.0.0)",
    "server.grpc_port": "ceresdb.nodes[].grpc_port",
    "server.http_port": "ceresdb.nodes[].http_port",
    "server.mysql_port": "ceresdb.nodes[].mysql_port",
    "server.postgresql_port": "ceresdb.nodes[].postgresql_port",
    "cluster_deployment.mode": "the supervisor (always WithMeta)",
    "cluster_deployment.meta_client.cluster_name": "cluster.name",
    "cluster_deployment.meta_client.meta_addr": "ceresdb.meta_addr",
    "cluster_deployment.meta_client.lease": "ceresdb.lease",
    "cluster_deployment.meta_client.timeout": "ceresdb.timeout",
    "cluster_deployment.etcd_client.server_addrs": "meta.nodes",
    "cluster_deployment.etcd_client.root_path": "cluster.flavor and cluster.keep_ceresdb_data",
    "cluster_deployment.etcd_client.shard_lock_lease_ttl_sec": "ceresdb.shard_lock_ttl",
    "cluster_deployment.etcd_client.enable_shard_lock_fast_reacquire": (
        "the supervisor (always false: the lease judgement tells a restarted node's locks from its "
        "predecessor's by their etcd lease, which fast re-acquire keeps)"
    ),
    "analytic.wal.type": "ceresdb.wal.type",
    "analytic.storage.object_store.type": "ceresdb.object_store.type",
}

_META_ADDR_RE: Final = re.compile(r"^https?://[^/:\s]+:\d{1,5}$")


@dataclass(frozen=True)
class Findings:
    errors: list[Problem]
    warnings: list[Problem]


def _flatten(table: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in table.items():
        dotted = f"{prefix}{key_segment(key)}"
        yield dotted, value
        if isinstance(value, dict):
            yield from _flatten(value, dotted + ".")


def check(spec: DesiredState) -> Findings:
    """Every rule of the desired-state file that types alone cannot express."""
    errors: list[Problem] = []
    warnings: list[Problem] = []
    release = spec.release
    flavor, version = release.flavor, release.version

    problem = _check_release(flavor, version)
    if problem is not None:
        return Findings([problem], [])  # every other rule depends on the release

    if spec.cluster.keep_ceresdb_data and not release.can_keep_ceresdb_data:
        errors.append(
            Problem(
                "cluster.keep_ceresdb_data",
                (
                    "only for HoraeDB from 2.0.0 (flavor horaedb), which can run on a CeresDB 1.x cluster's "
                    f"data; this cluster is {release.label()}: it keeps /ceresdb and catalog ceresdb itself"
                ),
            )
        )

    listen = parse_listen(spec.supervisor.listen)
    if not listen.is_loopback and spec.supervisor.token_file is None:
        errors.append(
            Problem(
                "supervisor.token_file", "required when supervisor.listen is TCP on a non-loopback address"
            )
        )
    if spec.supervisor.token_file is not None and not spec.supervisor.token_file.startswith("/"):
        errors.append(Problem("supervisor.token_file", "must be an absolute path"))
    if spec.supervisor.probe_timeout >= spec.supervisor.probe_interval:
        errors.append(Problem("supervisor.probe_timeout", "must be shorter than probe_interval"))
    if spec.supervisor.backoff_initial > spec.supervisor.backoff_max:
        errors.append(Problem("supervisor.backoff_initial", "must not exceed backoff_max"))

    # Names: unique across both roles (they share the container namespace).
    seen: dict[str, str] = {}
    refs = nodes(spec)
    for ref in refs:
        if ref.name in seen:
            errors.append(
                Problem(f"{ref.path}.name", f"duplicate node name {ref.name!r} (also {seen[ref.name]})")
            )
        else:
            seen[ref.name] = ref.path

    # Ports: no two listeners on one machine; all loopback addresses are one machine.
    taken: dict[tuple[str, int], str] = {}
    for ref in refs:
        for kind, port in ref.ports.items():
            key = (machine_of(ref.host), port)
            where = f"{ref.path}.{_PORT_KEYS[kind]}"
            if key in taken:
                machine = "this machine's loopback" if key[0] == "loopback" else ref.host
                errors.append(Problem(where, f"port {port} is already used by {taken[key]} on {machine}"))
            else:
                taken[key] = where

    meta_count = len(spec.meta.nodes)
    if meta_count % 2 == 0:
        errors.append(Problem("meta.nodes", f"{meta_count} meta nodes: etcd needs an odd number (1, 3, 5)"))
    by_machine: dict[str, list[str]] = {}
    for m in spec.meta.nodes:
        by_machine.setdefault(machine_of(m.host), []).append(m.name)
    for names in by_machine.values():
        if len(names) > 1:
            warnings.append(
                Problem(
                    "meta.nodes",
                    (
                        f"meta nodes {', '.join(names)} share a machine: CeresMeta forwards API calls to the "
                        "leader's host with the follower's own HTTP port, which cannot work here "
                        "(the supervisor sends those routes to the leader only)"
                    ),
                )
            )

    db = spec.ceresdb
    if db.lease >= LEASE_MAX_S:
        errors.append(
            Problem(
                "ceresdb.lease",
                (
                    f"must be under {LEASE_MAX_S:g}s: CeresMeta expires a node 10s after its last heartbeat "
                    "and heartbeats go every 2/3 of the lease"
                ),
            )
        )
    if db.shard_lock_ttl < SHARD_LOCK_TTL_MIN:
        errors.append(
            Problem("ceresdb.shard_lock_ttl", f"must be at least {SHARD_LOCK_TTL_MIN} (CeresDB refuses less)")
        )
    if db.meta_addr is not None and not _META_ADDR_RE.match(db.meta_addr):
        errors.append(Problem("ceresdb.meta_addr", "must be http://<host>:<port> (meta's client port)"))

    for i, node in enumerate(db.nodes):
        if node.postgresql_port is not None and not release.has_postgresql_port:
            errors.append(
                Problem(
                    f"ceresdb.nodes[{i}].postgresql_port",
                    f"exists from 1.2.6; this cluster is {release.label()}",
                )
            )

    errors += _check_wal(spec)
    errors += _check_object_store(spec)
    if spec.meta.topology == "dynamic" and db.object_store.type == "Local":
        warnings.append(
            Problem(
                "meta.topology",
                "dynamic topology moves shards between nodes; use it only with remote object storage",
            )
        )

    for path, role, table in config_tables(spec):
        errors += _check_config_table(path, role, table, release)
    if not errors:  # rendering needs a file that is consistent so far
        errors += _check_server_schema(spec)
    warnings += _check_lease_grace(spec)
    return Findings(errors, warnings)


# --- the servers' own schema (serverschema: derived from the real sources at each tag) ------------


@dataclass(frozen=True)
class _Source:
    """Where a key of a rendered file came from: a path in the desired-state file, and the prefix
    of the rendered document that path stands for."""

    path: str
    rendered: str
    table: dict[str, Any]


def _sources(spec: DesiredState, role: str, index: int) -> list[_Source]:
    """The parts of the file that end up in one node's rendered TOML, strongest first."""
    if role == "meta":
        return [
            _Source(f"meta.nodes[{index}].config", "", spec.meta.nodes[index].config),
            _Source("meta.config", "", spec.meta.config),
        ]
    db = spec.ceresdb
    return [
        _Source(f"ceresdb.nodes[{index}].config", "", db.nodes[index].config),
        _Source("ceresdb.config", "", db.config),
        _Source("ceresdb.wal", "analytic.wal", db.wal.model_dump(exclude_none=True)),
        _Source(
            "ceresdb.object_store",
            "analytic.storage.object_store",
            db.object_store.model_dump(exclude_none=True),
        ),
    ]


def _lookup(table: dict[str, Any], dotted: str) -> bool:
    node: Any = table
    for part in serverschema.path_keys(dotted):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _locate(sources: list[_Source], path: str, missing: bool) -> str | None:
    """The file's key path for a violation at `path` of the rendered document. For a missing key,
    the source that gave its table (in part); else the one that set the key itself."""
    keys = serverschema.path_keys(path)
    target = ".".join(key_segment(k) for k in keys[:-1]) if missing and len(keys) > 1 else path
    for source in sources:
        prefix = source.rendered
        if prefix and not (target == prefix or target.startswith(prefix + ".")):
            continue
        inner = target[len(prefix) :].lstrip(".")
        if _lookup(source.table, inner) or (missing and not inner and source.table):
            rest = path[len(prefix) :].lstrip(".")
            return f"{source.path}.{rest}" if rest else source.path
    return None


def _check_server_schema(spec: DesiredState) -> list[Problem]:
    """Every rendered file against the server's own schema of this version: an unknown key at any
    depth (ignored silently by the server), a wrong type (CeresDB exits 101, CeresMeta 2), a table
    required whole but given in part. Each problem names the key in this file that causes it."""
    release = spec.release
    problems: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    counters = {"meta": 0, "ceresdb": 0}
    for node in rendering.render(spec):
        index = counters[node.role]
        counters[node.role] += 1
        schema = (serverschema.meta_schema if node.role == "meta" else serverschema.db_schema)(
            release.version
        )
        document = rendering.redacted(node.document)
        for violation in serverschema.check(document, schema):
            where = _locate(_sources(spec, node.role, index), violation.path, violation.kind == "missing")
            if where is None:  # a key the supervisor rendered itself: our bug, said as such
                where = f"(rendered {node.name}).{violation.path}"
            message = violation.message
            if violation.kind == "unknown":
                server = "CeresMeta" if node.role == "meta" else "CeresDB"
                version = ".".join(map(str, release.version))
                message = f"not a key of the {server} {version} config; the server ignores it silently"
            if (where, message) not in seen:
                seen.add((where, message))
                problems.append(Problem(where, message))
    return problems


def _check_lease_grace(spec: DesiredState) -> list[Problem]:
    """lease_grace is added to the time CeresMeta takes to reopen a node's shards; shorter than
    that full reopen, a judgement that goes wrong (a slow meta) restarts a node that only waits."""
    pace = versions.Pace.of(spec.release.version, spec.ceresdb.lease)
    shards = -(-spec.meta.shard_total // max(1, len(spec.ceresdb.nodes)))
    full = pace.full_reopen_s(shards)
    if spec.supervisor.lease_grace < full:
        return [
            Problem(
                "supervisor.lease_grace",
                f"{spec.supervisor.lease_grace:g}s is shorter than CeresMeta {spec.release.label()} takes to "
                f"reopen one node's {shards} shards ({full:g}s at its pace); consider at least {full:g}s",
            )
        ]
    return []


def _check_release(flavor: str, version: versions.Version) -> Problem | None:
    """Only releases whose sources this project checked: 1.0/1.1 parse the server address
    differently, 2.1.0 drops the RocksDB WAL and starts Grafana on port 3000."""
    if version in versions.KNOWN_RELEASES[flavor]:
        return None
    text = ".".join(map(str, version))
    other = next((f for f, known in versions.KNOWN_RELEASES.items() if version in known), None)
    if other is not None:
        return Problem("cluster.version", f'{text} is a {other} release: set cluster.flavor = "{other}"')
    known = "; ".join(
        f"{f}: {', '.join('.'.join(map(str, v)) for v in vs)}" for f, vs in versions.KNOWN_RELEASES.items()
    )
    return Problem("cluster.version", f"{text} is not a release this project knows ({known})")


def _under_data_mount(path: str, value: str | None, mount: str) -> list[Problem]:
    if value is None:
        return []
    if not value.startswith(mount + "/") and value.rstrip("/") != mount:
        return [
            Problem(
                path,
                (
                    f"must lie under {mount}, where the node's data directory is mounted; "
                    "anything else is lost when the container is recreated"
                ),
            )
        ]
    return []


def _check_wal(spec: DesiredState) -> list[Problem]:
    wal, release = spec.ceresdb.wal, spec.release
    problems: list[Problem] = []
    for key, expected in (("obkv", "Obkv"), ("kafka", "Kafka")):
        if getattr(wal, key) is not None and wal.type != expected:
            problems.append(Problem(f"ceresdb.wal.{key}", f'only for type = "{expected}"'))
        if getattr(wal, key) is None and wal.type == expected:
            problems.append(Problem(f"ceresdb.wal.{key}", f'required for type = "{expected}"'))
    if wal.data_dir is not None and wal.type != "RocksDB":
        problems.append(Problem("ceresdb.wal.data_dir", 'only for type = "RocksDB"'))
    problems += _under_data_mount("ceresdb.wal.data_dir", wal.data_dir, release.db_data_path)
    if wal.kafka is not None:
        client, wanted = wal.kafka.client, release.kafka_brokers_key
        other = "boost_brokers" if wanted == "boost_broker" else "boost_broker"
        if getattr(client, other) is not None:
            problems.append(
                Problem(
                    f"ceresdb.wal.kafka.client.{other}",
                    f"{release.label()} reads {wanted}, and ignores {other}",
                )
            )
        elif getattr(client, wanted) is None:
            problems.append(Problem(f"ceresdb.wal.kafka.client.{wanted}", "required for a Kafka WAL"))
    return problems


def _check_object_store(spec: DesiredState) -> list[Problem]:
    store, release = spec.ceresdb.object_store, spec.release
    problems: list[Problem] = []
    if store.type == "S3" and not release.has_s3:
        problems.append(
            Problem("ceresdb.object_store.type", f"S3 exists from 1.2.4; this cluster is {release.label()}")
        )
    remote_keys = ("key_id", "key_secret", "endpoint", "bucket", "prefix")
    if store.type == "Local":
        for key in (*remote_keys, "region", "http", "retry"):
            if getattr(store, key) is not None:
                problems.append(Problem(f"ceresdb.object_store.{key}", 'not used by type = "Local"'))
        problems += _under_data_mount("ceresdb.object_store.data_dir", store.data_dir, release.db_data_path)
        return problems
    if store.data_dir is not None:
        problems.append(Problem("ceresdb.object_store.data_dir", 'only for type = "Local"'))
    required = (*remote_keys, "region") if store.type == "S3" else remote_keys
    for key in required:
        if getattr(store, key) is None:
            problems.append(Problem(f"ceresdb.object_store.{key}", f'required for type = "{store.type}"'))
    if store.type == "Aliyun" and store.region is not None:
        problems.append(Problem("ceresdb.object_store.region", 'only for type = "S3"'))
    for key in ("http", "retry"):
        if getattr(store, key) is not None and not release.object_store_http_tables:
            problems.append(
                Problem(
                    f"ceresdb.object_store.{key}", f"exists from 1.2.4; this cluster is {release.label()}"
                )
            )
    return problems


def _check_config_table(
    path: str, role: Literal["meta", "ceresdb"], table: dict[str, Any], release: versions.Release
) -> list[Problem]:
    problems: list[Problem] = []
    owned = META_OWNED_KEYS if role == "meta" else DB_OWNED_KEYS
    for key, _value in _flatten(table):
        where = f"{path}.{key}"
        # CeresMeta's go-toml v2 matches keys case-insensitively (STORAGE-ROOT-PATH sets
        # storage-root-path); CeresDB's serde does not.
        mine = key.lower() if role == "meta" else key
        if mine in owned:
            problems.append(Problem(where, f"is set by the supervisor from {owned[mine]}"))
        elif role == "ceresdb" and key in versions.REMOVED_DB_KEYS:
            problems.append(
                Problem(where, (f"the server ignores it without a word ({versions.REMOVED_DB_KEYS[key]})"))
            )
        elif (
            role == "ceresdb"
            and key == "analytic.wal.kafka.client.boost_broker"
            and release.kafka_brokers_key != "boost_broker"
        ):
            problems.append(Problem(where, f"{release.label()} reads boost_brokers (a list)"))
        elif (
            role == "ceresdb"
            and key == "analytic.wal.kafka.client.boost_brokers"
            and release.kafka_brokers_key != "boost_brokers"
        ):
            problems.append(Problem(where, f"{release.label()} reads boost_broker (one string)"))
    if role == "ceresdb":
        for key in table:
            if key not in versions.DB_TOP_LEVEL_KEYS:
                problems.append(
                    Problem(
                        f"{path}.{key_segment(key)}",
                        (
                            "not a section of the CeresDB config; the server would exit at start "
                            f"(sections: {', '.join(sorted(versions.DB_TOP_LEVEL_KEYS))})"
                        ),
                    )
                )
    return problems
