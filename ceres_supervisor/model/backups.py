"""Backups of CeresMeta's etcd: the manifest written beside each snapshot, what the daemon shows of
its scheduled backups, and where CeresMeta keeps its etcd on disk. Pure data.

Facts from the real servers (apache/incubator-horaedb-meta v1.2.2 to v1.2.7 and apache/horaedb
v2.0.0 `horaemeta/`, `server/config/config.go`): the embedded etcd (3.5.4) keeps its member
directory in `<data-dir>/etcd` (`defaultEtcdDataDir`) and its write-ahead log in `<data-dir>/wal`
(`defaultWalDir`, etcd's dedicated WAL directory), logs to `<data-dir>/etcd.log`, and bootstraps
with `initial-cluster-token` "ceresmeta-cluster" (1.x) or "horaemeta-cluster" (2.0.0) unless the
file sets one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Final

FORMAT: Final = 1
"""The manifest's format; a reader refuses any other."""
KIND: Final = "ceres-supervisor/meta-backup"
SNAPSHOT_SUFFIX: Final = ".db"
MANIFEST_SUFFIX: Final = ".manifest.json"

ETCD_MEMBER_DIR: Final = "etcd"
"""`<data-dir>/etcd`: the embedded etcd's data directory (its `member/snap/db`)."""
ETCD_WAL_DIR: Final = "wal"
"""`<data-dir>/wal`: the embedded etcd's dedicated WAL directory."""


def default_cluster_token(flavor: str) -> str:
    """CeresMeta's `defaultInitialClusterToken` of the flavor."""
    return "horaemeta-cluster" if flavor == "horaedb" else "ceresmeta-cluster"


def stamp(at: datetime) -> str:
    """`20261207T143012.345Z`: sortable, and unique enough for two backups a second apart."""
    return at.strftime("%Y%m%dT%H%M%S.") + f"{at.microsecond // 1000:03d}Z"


def snapshot_name(cluster: str, at: datetime) -> str:
    return f"{cluster}-{stamp(at)}{SNAPSHOT_SUFFIX}"


def manifest_path_of(snapshot: str) -> str:
    """The manifest beside a snapshot (`x.db` -> `x.db.manifest.json`)."""
    return snapshot + MANIFEST_SUFFIX


def snapshot_path_of(path: str) -> str:
    """The snapshot a path names: itself, or the one its manifest describes."""
    return path.removesuffix(MANIFEST_SUFFIX)


@dataclass(frozen=True)
class Manifest:
    """What a backup is: written after its snapshot, so a snapshot without one is incomplete."""

    cluster: str
    flavor: str
    version: str
    revision: int
    """etcd's revision in the snapshot (as `etcdutl snapshot status` reads it)."""
    members: tuple[str, ...]
    """The meta members of the file when it was taken."""
    taken_at: str
    """RFC 3339, UTC."""
    supervisor_version: str
    snapshot: str
    """The snapshot's file name, in the manifest's directory."""
    size: int
    sha256: str
    source: str
    """The member it was read from (`meta0 http://host:port`)."""
    total_keys: int
    etcdutl_version: str
    duration_s: float

    def encode(self) -> bytes:
        doc = {"format": FORMAT, "kind": KIND, **asdict(self), "members": list(self.members)}
        return (json.dumps(doc, indent=2) + "\n").encode()

    @classmethod
    def decode(cls, raw: bytes) -> Manifest:
        """Raises ValueError naming what is wrong with the document."""
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        if doc.get("kind") != KIND or doc.get("format") != FORMAT:
            raise ValueError(f"not a ceres-supervisor backup manifest of format {FORMAT}")
        text = (
            "cluster",
            "flavor",
            "version",
            "taken_at",
            "supervisor_version",
            "snapshot",
            "sha256",
            "source",
            "etcdutl_version",
        )
        numbers = ("revision", "size", "total_keys")
        wrong = [k for k in text if not isinstance(doc.get(k), str)]
        wrong += [k for k in numbers if not isinstance(doc.get(k), int) or isinstance(doc.get(k), bool)]
        members = doc.get("members")
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            wrong.append("members")
        if not isinstance(doc.get("duration_s"), int | float):
            wrong.append("duration_s")
        if wrong:
            raise ValueError(f"missing or mistyped: {', '.join(wrong)}")
        fields: dict[str, Any] = {k: doc[k] for k in (*text, *numbers)}
        return cls(members=tuple(members), duration_s=float(doc["duration_s"]), **fields)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Taken:
    """One backup written: where, and what its manifest says."""

    path: str
    manifest: Manifest


@dataclass(frozen=True)
class BackupStatus:
    """The scheduled backups as this agent sees them (`backup` in /v1/status, and the metric)."""

    enabled: bool = False
    dir: str | None = None
    interval_s: float | None = None
    keep: int | None = None
    holder: str | None = None
    """The agent that takes them (the store's `backup` key), when known."""
    state: str = "off"
    """off, waiting, taking, other_agent (another agent takes them), failing."""
    detail: str | None = None
    last_success: Taken | None = None
    last_success_at: float | None = None
    """Unix time of the last good backup this agent took (read back from `dir` at start)."""
    last_error: str | None = None
    last_error_at: datetime | None = None
    next_at: datetime | None = None
    pruned: tuple[str, ...] = field(default_factory=tuple)

    def document(self) -> dict[str, Any]:
        """The `backup` object of /v1/status: every field present, null when it has no value."""
        taken = self.last_success
        return {
            "enabled": self.enabled,
            "dir": self.dir,
            "interval_s": self.interval_s,
            "keep": self.keep,
            "state": self.state,
            "detail": self.detail,
            "holder": self.holder,
            "last_success": None
            if taken is None
            else {
                "at": taken.manifest.taken_at,
                "path": taken.path,
                "revision": taken.manifest.revision,
                "size": taken.manifest.size,
                "sha256": taken.manifest.sha256,
                "duration_s": taken.manifest.duration_s,
            },
            "last_error": None
            if self.last_error is None
            else {"error": self.last_error, "at": _rfc3339(self.last_error_at)},
            "next_at": _rfc3339(self.next_at),
        }


def _rfc3339(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
