"""What differs between CeresDB/CeresMeta releases and the HoraeDB flavor, in one place.

Pure data and functions. Each fact cites the section of `docs/real-servers.md` it comes
from, so a change in the servers has one place to land here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

Flavor = Literal["ceresdb", "horaedb"]
Version = tuple[int, int, int]

V1_2_2: Final[Version] = (1, 2, 2)
V1_2_4: Final[Version] = (1, 2, 4)
V1_2_6: Final[Version] = (1, 2, 6)
V1_2_7: Final[Version] = (1, 2, 7)
V2_0_0: Final[Version] = (2, 0, 0)

KNOWN_RELEASES: Final[dict[str, tuple[Version, ...]]] = {
    # Tags of apache/horaedb and apache/incubator-horaedb-meta that the version tables of this
    # project (and `serverschema`) were checked against; there is no v1.2.3 tag.
    "ceresdb": ((1, 2, 2), (1, 2, 4), (1, 2, 5), (1, 2, 6), (1, 2, 7)),
    "horaedb": ((2, 0, 0),),
}

_VERSION_RE: Final = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)$")


def parse_version(text: str) -> Version:
    match = _VERSION_RE.match(text)
    if match is None:
        raise ValueError(f'{text!r} is not a release version like "1.2.2"')
    major, minor, patch = (int(g) for g in match.groups())
    return (major, minor, patch)


def version_text(version: Version) -> str:
    return ".".join(str(n) for n in version)


@dataclass(frozen=True)
class Release:
    """Everything the supervisor needs to know about one flavor at one version."""

    flavor: Flavor
    version: Version
    keeps_ceresdb_data: bool = False
    """HoraeDB 2.x on a CeresDB 1.x cluster's data: the 1.x etcd root and default catalog kept
    (`cluster.keep_ceresdb_data`; horaedb commit 1a452f2c, #1455)."""

    # -- CeresMeta / HoraeMeta (sections 1.3, 2.2, 5) -------------------------------------------
    @property
    def meta_http_port_key(self) -> str:
        """`default-http-port` up to 1.2.6, `http-port` from 1.2.7 (the old key is then ignored)."""
        return "default-http-port" if self.version < V1_2_7 else "http-port"

    @property
    def meta_health_path(self) -> str:
        return "/api/v1/healthCheck" if self.version < V1_2_7 else "/api/v1/health"

    @property
    def meta_leader_key(self) -> str:
        """CeresMeta's leader key: `/members/leader` up to 1.2.6 (the member's root path is passed
        as ""), `<storage-root-path>/members/leader` from 1.2.7 (section 2.4)."""
        return "/members/leader" if self.version < V1_2_7 else f"{self.root_path}/members/leader"

    @property
    def meta_config_path(self) -> str:
        return (
            "/etc/ceresmeta/ceresmeta.toml" if self.flavor == "ceresdb" else "/etc/horaemeta/horaemeta.toml"
        )

    @property
    def meta_config_name(self) -> str:
        return self.meta_config_path.rsplit("/", 1)[1]

    @property
    def meta_data_path(self) -> str:
        """Where the node's data directory is mounted inside a meta container."""
        return "/home/admin/data/ceresmeta" if self.flavor == "ceresdb" else "/home/admin/data/horaemeta"

    # -- CeresDB / HoraeDB (sections 3, 5, 7) ----------------------------------------------------
    @property
    def has_debug_shards(self) -> bool:
        """CeresDB's `GET /debug/shards` (each shard's status: a lock held is not a shard open)
        exists from 1.2.5 (docs/real-servers.md section 8.2)."""
        return self.version >= (1, 2, 5)

    @property
    def has_fast_reacquire(self) -> bool:
        """`[cluster_deployment.etcd_client] enable_shard_lock_fast_reacquire` exists from 2.0.0
        (horaedb 4c66a3f1, #1251). The supervisor renders it false: with it, a restarted node keeps
        its predecessor's lock key and lease, and nothing tells the new incarnation's locks from
        the old one's (docs/real-servers.md, "fast re-acquire")."""
        return self.version >= V2_0_0

    @property
    def root_path(self) -> str:
        """etcd root of meta's storage and of CeresDB's shard locks: `/ceresdb` (1.x, and 2.x keeping a
        1.x cluster's data) or `/horaedb`."""
        return "/ceresdb" if self.flavor == "ceresdb" or self.keeps_ceresdb_data else "/horaedb"

    @property
    def can_keep_ceresdb_data(self) -> bool:
        """Where the real server reads a 1.x cluster's data: HoraeDB from 2.0.0, whose default catalog
        is `HORAEDB_DEFAULT_CATALOG` (default "horaedb"; 1.x hard-coded "ceresdb") and whose roots are
        settings (horaedb 1a452f2c, #1455, first in v2.0.0-rc.1)."""
        return self.flavor == "horaedb" and self.version >= V2_0_0

    @property
    def catalog_env(self) -> dict[str, str]:
        """The default catalog of a 2.x node keeping 1.x data; none otherwise (the server's own)."""
        return {"HORAEDB_DEFAULT_CATALOG": "ceresdb"} if self.keeps_ceresdb_data else {}

    @property
    def db_config_path(self) -> str:
        return "/etc/ceresdb/ceresdb.toml" if self.flavor == "ceresdb" else "/etc/horaedb/horaedb.toml"

    @property
    def db_config_name(self) -> str:
        return self.db_config_path.rsplit("/", 1)[1]

    @property
    def db_data_path(self) -> str:
        """Where the node's data directory is mounted inside a CeresDB container (the seed's path)."""
        return "/home/admin/data/ceresdb" if self.flavor == "ceresdb" else "/home/admin/data/horaedb"

    @property
    def server_addr_env(self) -> str:
        """Replaces `[node] addr` verbatim: a host, never `host:port` (pitfall 1)."""
        return "CERESDB_SERVER_ADDR" if self.flavor == "ceresdb" else "HORAEDB_SERVER_ADDR"

    @property
    def has_postgresql_port(self) -> bool:
        return self.version >= V1_2_6

    @property
    def has_s3(self) -> bool:
        return self.version >= V1_2_4

    @property
    def kafka_brokers_key(self) -> str:
        """`boost_broker` (one string) up to 1.2.2, `boost_brokers` (a list) from 1.2.4."""
        return "boost_broker" if self.version < V1_2_4 else "boost_brokers"

    @property
    def object_store_http_tables(self) -> bool:
        """From 1.2.4 the Aliyun/S3 HTTP settings live in `http` and `retry` sub-tables."""
        return self.version >= V1_2_4

    def label(self) -> str:
        """`ceresdb 1.2.4`: also the value of the containers' release label (`parse_release`)."""
        return f"{self.flavor} {version_text(self.version)}"

    def same_servers(self, other: Release) -> bool:
        """The same server binaries (flavor and version), whatever the data settings."""
        return (self.flavor, self.version) == (other.flavor, other.version)


def parse_release(text: str) -> Release | None:
    """A release label (`ceresdb 1.2.4`, `Release.label`), or None when it is not one."""
    flavor, _, version = text.strip().partition(" ")
    if flavor not in ("ceresdb", "horaedb"):
        return None
    try:
        return Release(flavor, parse_version(version))  # type: ignore[arg-type]
    except ValueError:
        return None


_IMAGE_TAG_RE: Final = re.compile(r":v?(\d+\.\d+\.\d+)(?:@.*)?$")


def release_of_image(image: str) -> Release | None:
    """What an image reference says of its release, for containers made before they carried the
    release label: a `X.Y.Z` (or `vX.Y.Z`) tag, horaedb when the repository is HoraeDB's/HoraeMeta's.
    None for a tag that is no release (`latest`, a digest alone)."""
    match = _IMAGE_TAG_RE.search(image)
    if match is None:
        return None
    repository = image[: match.start()].rsplit("/", 1)[-1]
    flavor: Flavor = "horaedb" if repository.startswith("horae") else "ceresdb"
    return Release(flavor, parse_version(match.group(1)))


# Keys the CeresDB server no longer reads (it ignores them silently), with what to use instead
# (section 3.3 and pitfall 4). Paths are dotted TOML paths inside the rendered CeresDB file.
REMOVED_DB_KEYS: Final[dict[str, str]] = {
    "runtime.background_thread_num": (
        "removed in 1.2.0; use compact_thread_num, default_thread_num and io_thread_num"
    ),
    "analytic.write_group_worker_num": "removed in 1.2.0",
    "analytic.write_group_command_channel_cap": "removed in 1.2.0",
    "analytic.compaction_config": "renamed to [analytic.compaction] in 1.2.0",
    "server.deploy_mode": "existed only up to 0.4.0",
}

# Top-level tables the CeresDB server accepts; any other makes it exit 101 (section 3.1).
DB_TOP_LEVEL_KEYS: Final[frozenset[str]] = frozenset(
    {
        "node",
        "server",
        "runtime",
        "logger",
        "tracing",
        "query_engine",
        "limiter",
        "cluster_deployment",
        "analytic",
    }
)


# -- CeresMeta's reopen pace (the lease judgement in `decisions.leases` and `validate` use it) ----

SCHEDULER_TICK_S: Final = 5.0
"""CeresMeta's scheduler interval (META v1.2.2 scheduler_manager.go `schedulerInterval`, the same
at v1.2.7 and in HoraeMeta 2.0.0)."""
BATCHED_TICKS: Final = 2
"""From 1.2.4 every pending shard goes in one batch: one tick to notice, one to run it."""


@dataclass(frozen=True)
class Pace:
    """How the version's CeresMeta reopens shards."""

    one_per_tick: bool
    """1.2.2: one open-shard procedure per tick, cluster-wide, first pending shard first."""
    offline_blocks: bool
    """Up to 1.2.7: an offline assigned node stops every reopen in the cluster."""
    label: str
    heartbeat_s: float
    """CeresDB's heartbeat interval, 2/3 of `ceresdb.lease`: how late meta learns of an open."""

    @classmethod
    def of(cls, version: tuple[int, int, int], lease_s: float) -> Pace:
        return cls(
            one_per_tick=version < (1, 2, 4),
            offline_blocks=version < (2, 0, 0),
            label=".".join(map(str, version)),
            heartbeat_s=lease_s * 2 / 3,
        )

    def seconds(self, pending: int) -> float:
        """How long the scheduler may take to reopen a shard when `pending` wait cluster-wide:
        at 1.2.2 the shards ahead of it one at a time, each a tick plus the heartbeat that reports
        it open; batched, two ticks and a heartbeat."""
        if self.one_per_tick:
            return (pending + 1) * (SCHEDULER_TICK_S + self.heartbeat_s)
        return BATCHED_TICKS * SCHEDULER_TICK_S + self.heartbeat_s

    def full_reopen_s(self, shards: int) -> float:
        """Reopening all of one node's `shards`, nothing else pending."""
        return self.seconds(shards if self.one_per_tick else 0)
