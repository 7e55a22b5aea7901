"""Decisions about backups: does a backup fit this file, which old ones go, when is the next one. Pure.

A restore puts the snapshot's members back under the names, peer URLs and token of *this* file: a
snapshot of another cluster, of the other flavor or of other members would bring back metadata
that names nodes, roots and a cluster this file does not run, so it is refused, naming each
difference. A snapshot of another version of the same flavor is allowed (metadata keeps its layout
within a flavor) and said.
"""

from __future__ import annotations

from collections.abc import Sequence

from ceres_supervisor.model.backups import Manifest
from ceres_supervisor.model.spec import DesiredState


def mismatches(manifest: Manifest, spec: DesiredState) -> list[str]:
    """Every way the backup does not fit the file (empty: it fits)."""
    problems = []
    if manifest.cluster != spec.cluster.name:
        problems.append(
            f"it is a backup of cluster {manifest.cluster!r}, the file runs cluster {spec.cluster.name!r}"
        )
    if manifest.flavor != spec.cluster.flavor:
        problems.append(f"it is a {manifest.flavor} backup, the file runs {spec.cluster.flavor}")
    members = sorted(m.name for m in spec.meta.nodes)
    if sorted(manifest.members) != members:
        problems.append(
            f"its meta members are {', '.join(sorted(manifest.members)) or 'none'}, the file's are "
            f"{', '.join(members)}"
        )
    return problems


def version_note(manifest: Manifest, spec: DesiredState) -> str | None:
    if manifest.version == spec.cluster.version:
        return None
    return (
        f"the backup was taken at {manifest.flavor} {manifest.version}, the file runs "
        f"{spec.cluster.version}: meta reads it as its own data after an upgrade"
    )


def checksum_problem(manifest: Manifest, sha256: str, size: int) -> str | None:
    if size != manifest.size:
        return (
            f"the snapshot has {size} bytes, its manifest says {manifest.size}: it is not the file backed up"
        )
    if sha256 != manifest.sha256:
        return f"the snapshot's SHA-256 is {sha256}, its manifest says {manifest.sha256}: it is corrupt"
    return None


def to_prune(found: Sequence[tuple[str, Manifest]], cluster: str, keep: int) -> list[str]:
    """The snapshots (paths) of `cluster` beyond the newest `keep`, oldest first. Backups of other
    clusters sharing the directory are never counted nor touched."""
    ours = sorted(((m.taken_at, path) for path, m in found if m.cluster == cluster), reverse=True)
    return sorted(path for _at, path in ours[keep:])


def next_due(last_success_at: float | None, interval_s: float, now: float) -> float:
    """Unix time of the next scheduled backup: `interval` after the last good one (at once when
    there is none, or when it is overdue)."""
    if last_success_at is None:
        return now
    return max(now, last_success_at + interval_s)


def retry_s(interval_s: float) -> float:
    """After a failed try (meta down, the store out of reach): soon, never more often than 1/s."""
    return max(1.0, min(interval_s, 30.0))
