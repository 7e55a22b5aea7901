"""Restoring CeresMeta's metadata from a backup, on a stopped cluster (README, Backups and restores).

`check` refuses a backup that is not whole (its SHA-256 and size against its manifest) or not of
this file (cluster name, flavor, meta members: `decisions.backups.mismatches`). `restore` then
rebuilds each meta member of this machine with etcd's own `etcdutl snapshot restore`, under the
name, initial cluster, token and peer URLs its rendered config gives, into a fresh directory made
beside the member's data directory; only when every member is restored are the old directories
moved aside (`<data>.before-restore-<time>`, never deleted) and the new ones put in their place.
A failure before that leaves everything as it was (only the fresh directories are removed). The
caller makes sure nothing runs: no daemon, no container of this machine.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ceres_supervisor.adapters import etcdutl
from ceres_supervisor.decisions import backups as decide
from ceres_supervisor.desired import identity
from ceres_supervisor.desired.containers import DesiredCluster, DesiredNode
from ceres_supervisor.model import backups
from ceres_supervisor.model.backups import Manifest
from ceres_supervisor.model.errors import CeresError
from ceres_supervisor.model.spec import DesiredState


class BackupRefused(CeresError):
    """The backup cannot be restored here (corrupt, incomplete, or of another cluster)."""


class RestoreError(CeresError):
    """The restore did not happen (the data is as it was)."""


@dataclass(frozen=True)
class Checked:
    snapshot: Path
    manifest: Manifest
    notes: tuple[str, ...]


@dataclass(frozen=True)
class Restored:
    node: str
    data_dir: Path
    moved_aside: Path | None
    """Where its previous data is now (None: it had none)."""


def digest(path: Path) -> tuple[str, int]:
    """(SHA-256 hex, size) of a file, read in blocks."""
    hasher, size = hashlib.sha256(), 0
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            hasher.update(block)
            size += len(block)
    return hasher.hexdigest(), size


def _read_checked(path: Path, spec: DesiredState) -> Checked:
    snapshot = Path(backups.snapshot_path_of(str(path)))
    manifest_path = Path(backups.manifest_path_of(str(snapshot)))
    try:
        manifest = Manifest.decode(manifest_path.read_bytes())
    except FileNotFoundError:
        raise BackupRefused(f"{manifest_path} is missing: an unfinished backup, or not one") from None
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise BackupRefused(f"{manifest_path} cannot be read as a backup manifest: {err}") from None
    problems = decide.mismatches(manifest, spec)
    if problems:
        raise BackupRefused(f"{snapshot} does not fit this file: " + "; ".join(problems))
    try:
        sha256, size = digest(snapshot)
    except OSError as err:
        raise BackupRefused(f"{snapshot} cannot be read: {err.strerror or err}") from None
    problem = decide.checksum_problem(manifest, sha256, size)
    if problem is not None:
        raise BackupRefused(f"{snapshot}: {problem}")
    note = decide.version_note(manifest, spec)
    return Checked(snapshot, manifest, (note,) if note else ())


async def check(path: Path, spec: DesiredState) -> Checked:
    """The backup at `path` (its snapshot or its manifest), checked whole against this file.
    Raises BackupRefused naming what is wrong."""
    return await asyncio.to_thread(_read_checked, path, spec)


def _host_path(node: DesiredNode, inside: str) -> Path:
    """Where a path of the container (its rendered `data-dir`) is on this machine, by its mounts."""
    for mount in node.container.mounts:
        if inside == mount.target or inside.startswith(mount.target.rstrip("/") + "/"):
            return Path(mount.source) / inside[len(mount.target) :].lstrip("/")
    raise RestoreError(f"{node.name}: its data-dir {inside} is not on a mounted directory")


def members(desired: DesiredCluster, staging_suffix: str) -> list[tuple[DesiredNode, Path, etcdutl.Member]]:
    """(node, its data directory, the member to restore into a fresh directory beside it) for each
    meta member of this machine, from the config the supervisor renders for it."""
    spec = desired.spec
    planned = []
    for node in desired.meta:
        if not node.is_local:
            continue
        config: dict[str, Any] = tomllib.loads(node.config_text.decode())
        data_dir = _host_path(node, str(config["data-dir"]))
        staging = data_dir.with_name(f".{data_dir.name}.{staging_suffix}")
        member = etcdutl.Member(
            name=str(config["node-name"]),
            initial_cluster=str(config["initial-cluster"]),
            token=str(
                config.get("initial-cluster-token", backups.default_cluster_token(spec.cluster.flavor))
            ),
            peer_urls=str(config["advertise-peer-urls"]),
            data_dir=staging / backups.ETCD_MEMBER_DIR,
            wal_dir=staging / backups.ETCD_WAL_DIR,
        )
        planned.append((node, data_dir, member))
    return planned


def _swap(data_dir: Path, staging: Path, aside: Path) -> Path | None:
    moved = None
    if data_dir.exists():
        os.rename(data_dir, aside)
        moved = aside
    os.rename(staging, data_dir)
    return moved


async def restore(desired: DesiredCluster, checked: Checked, tool: str) -> list[Restored]:
    """Every meta member of this machine restored from the checked snapshot. Raises RestoreError
    (or etcdutl.EtcdutlError) with the data as it was."""
    stamp = backups.stamp(datetime.now(UTC))
    planned = members(desired, f"restoring-{stamp}")
    owner = identity.Owner(desired.spec.cluster.name, desired.spec.cluster.flavor)
    made: list[Path] = []
    try:
        for node, _data_dir, member in planned:
            staging = member.data_dir.parent
            if staging.exists():
                raise RestoreError(f"{staging} exists: another restore is under way")
            await asyncio.to_thread(staging.mkdir, 0o700, True)
            made.append(staging)
            await etcdutl.restore(tool, checked.snapshot, member)
            marker = identity.new_marker(owner, node.name, restored_from=checked.snapshot.name)
            await asyncio.to_thread(identity.write, staging, marker)
            await asyncio.to_thread(os.chmod, staging, 0o755)
    except BaseException:
        for staging in made:  # only the directories made here: nothing of the cluster's data
            await asyncio.to_thread(shutil.rmtree, staging, True)
        raise
    restored: list[Restored] = []
    for node, data_dir, member in planned:
        aside = data_dir.with_name(f"{data_dir.name}.before-restore-{stamp}")
        try:
            moved = await asyncio.to_thread(_swap, data_dir, member.data_dir.parent, aside)
        except OSError as err:
            done = ", ".join(r.node for r in restored) or "none"
            raise RestoreError(
                f"{node.name}: cannot put the restored directory in place ({err.strerror or err}); "
                f"restored before this: {done}; the restored data of {node.name} is in "
                f"{member.data_dir.parent}, its previous data in {aside if aside.exists() else data_dir}"
            ) from None
        restored.append(Restored(node.name, data_dir, moved))
    return restored


def remote_members(desired: DesiredCluster) -> list[DesiredNode]:
    return [n for n in desired.meta if not n.is_local]


def cleanup_hint(restored: list[Restored]) -> list[str]:
    return [str(r.moved_aside) for r in restored if r.moved_aside is not None]
