"""Backups of CeresMeta's metadata: a snapshot of its embedded etcd, taken and kept (README).

`take` reads the whole keyspace from one healthy member through etcd's own Snapshot call, writes it
atomically (a temporary file in the target directory, fsync, rename, fsync of the directory) with
its SHA-256, has etcd's own `etcdutl snapshot status` read it before it is published, then writes
the manifest beside it: a snapshot without its manifest is an unfinished backup. `Schedule` is the
daemon's task for `[backup]`: one agent cluster-wide takes them (it holds the store's `backup` key,
bound to its lease), every `interval`, keeping the newest `keep`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

import aiohttp
import structlog

from ceres_supervisor import __version__
from ceres_supervisor.adapters import etcd, etcdutl, snapshots
from ceres_supervisor.decisions import backups as decide
from ceres_supervisor.desired import files
from ceres_supervisor.model import backups
from ceres_supervisor.model.backups import BackupStatus, Manifest, Taken
from ceres_supervisor.model.errors import CeresError
from ceres_supervisor.model.spec import DesiredState

log = structlog.get_logger(__name__)

CLAIM: Final = "backup"
"""The store key (`/ceres-supervisor/<cluster>/backup`) the agent that takes backups holds."""
RECHECK_S: Final = 5.0
"""How often the schedule looks again at the file (a reload) and at meta while it waits."""
TAKE_TIMEOUT_S: Final = 600.0
WRITE_BATCH: Final = 1 << 20


class BackupError(CeresError):
    """No backup was written (nothing is left behind): why, for a person."""


class Claims(Protocol):
    """The store's one-agent-does-it keys (`coordinator.Coordinator`)."""

    async def claim(self, name: str, doc: dict[str, Any]) -> str | None: ...

    async def unclaim(self, name: str) -> None: ...


def rfc3339(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def members(spec: DesiredState, prefer: Callable[[str], bool]) -> list[tuple[str, str]]:
    """(name, client URL) of every meta member, those on `prefer`red hosts first, else file order."""
    found = [(m.name, f"http://{m.host}:{m.client_port}", m.host) for m in spec.meta.nodes]
    return [(name, url) for name, url, host in sorted(found, key=lambda m: not prefer(m[2]))]


def target(spec: DesiredState, output: Path | None, at: datetime, directory: bool = False) -> Path:
    """Where the snapshot goes: `output` itself, or a new name in the directory it names (always
    with `directory`; when it is one; the file's `backup.dir`, else the current directory, when none)."""
    if output is None:
        output, directory = Path(spec.backup.dir or "."), True
    if directory or output.is_dir():
        return output / backups.snapshot_name(spec.cluster.name, at)
    return output


class _File:
    """A temporary file beside the target: written, synced, then renamed into place (sync calls,
    run in a thread each)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o600)  # the whole metadata of the cluster
        self.handle = os.fdopen(fd, "wb")
        self.tmp = Path(tmp)
        self.path = path

    def write(self, data: bytes) -> None:
        self.handle.write(data)

    def sync(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()

    def publish(self) -> None:
        """In place under its name, never over another file (a link fails when the name exists)."""
        os.link(self.tmp, self.path)
        self.tmp.unlink()
        dir_fd = os.open(self.path.parent, os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.handle.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


_VERSIONS: dict[str, str] = {}


async def _tool_version(tool: str) -> str:
    if tool not in _VERSIONS:
        _VERSIONS[tool] = await etcdutl.version(tool)
    return _VERSIONS[tool]


async def take(
    spec: DesiredState,
    session: aiohttp.ClientSession,
    tool: str,
    output: Path | None = None,
    prefer: Callable[[str], bool] = lambda _host: False,
    timeout_s: float = 10.0,
    directory: bool = False,
) -> Taken:
    """One backup, from the first healthy member. Raises BackupError, etcdutl.EtcdutlError or
    OSError; leaves nothing behind when it fails."""
    started, at = time.monotonic(), datetime.now(UTC)
    tried = []
    for name, url in members(spec, prefer):
        why = await snapshots.health(session, url, timeout_s)
        if why is None:
            break
        tried.append(f"{name} ({url}): {why}")
    else:
        raise BackupError(f"no healthy meta member to read a snapshot from: {'; '.join(tried)}")
    path = target(spec, output, at, directory)
    if path.exists():
        raise BackupError(f"{path} exists: a backup is never written over")
    sink = await asyncio.to_thread(_File, path)
    hasher, size, pending = hashlib.sha256(), 0, bytearray()
    try:
        async for chunk in snapshots.stream(session, url, timeout_s):
            hasher.update(chunk)
            size += len(chunk)
            pending += chunk
            if len(pending) >= WRITE_BATCH:
                await asyncio.to_thread(sink.write, bytes(pending))
                pending.clear()
        await asyncio.to_thread(sink.write, bytes(pending))
        await asyncio.to_thread(sink.sync)
        status = await etcdutl.status(tool, sink.tmp)  # etcd's own reading, before it is published
        manifest = Manifest(
            cluster=spec.cluster.name,
            flavor=spec.cluster.flavor,
            version=spec.cluster.version,
            revision=status.revision,
            members=tuple(m.name for m in spec.meta.nodes),
            taken_at=rfc3339(at),
            supervisor_version=__version__,
            snapshot=path.name,
            size=size,
            sha256=hasher.hexdigest(),
            source=f"{name} {url}",
            total_keys=status.total_keys,
            etcdutl_version=await _tool_version(tool),
            duration_s=round(time.monotonic() - started, 3),
        )
        await asyncio.to_thread(sink.publish)
        manifest_path = Path(backups.manifest_path_of(str(path)))
        try:
            await asyncio.to_thread(files.write_atomic, manifest_path, manifest.encode(), 0o600)
        except BaseException:  # a snapshot without its manifest is no backup: take it back
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(path.unlink)
            raise
    except etcd.EtcdUnavailable as err:
        raise BackupError(str(err)) from None
    finally:
        await asyncio.to_thread(sink.discard)
    return Taken(str(path), manifest)


# --- what is kept ---------------------------------------------------------------------------------


def found_in(directory: Path) -> list[tuple[str, Manifest]]:
    """(snapshot path, manifest) of every finished backup in `directory`; unreadable manifests are
    left alone (not counted, not deleted)."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in directory.iterdir():
            if not entry.name.endswith(backups.MANIFEST_SUFFIX) or entry.name.startswith("."):
                continue
            try:
                manifest = Manifest.decode(entry.read_bytes())
            except (OSError, ValueError, UnicodeDecodeError):
                continue
            found.append((backups.snapshot_path_of(str(entry)), manifest))
    return found


def newest(directory: Path, cluster: str) -> Taken | None:
    ours = [(m.taken_at, path, m) for path, m in found_in(directory) if m.cluster == cluster]
    if not ours:
        return None
    _at, path, manifest = max(ours)
    return Taken(path, manifest)


def prune(directory: Path, cluster: str, keep: int) -> list[str]:
    """Delete this cluster's backups beyond the newest `keep`: each manifest first (the backup is
    then unfinished, never half-counted), then its snapshot. Returns the snapshots deleted."""
    gone = decide.to_prune(found_in(directory), cluster, keep)
    for snapshot in gone:
        for path in (backups.manifest_path_of(snapshot), snapshot):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    return gone


def taken_at_unix(taken: Taken) -> float | None:
    try:
        return datetime.fromisoformat(taken.manifest.taken_at.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# --- the daemon's schedule --------------------------------------------------------------------------


class Schedule:
    """`[backup]` in the daemon: one agent cluster-wide takes a backup every `interval` (the one that
    holds the store's `backup` key; another takes over when its lease goes), keeps the newest `keep`,
    and says how it went in `status` (the `backup` object of /v1/status, and the metric)."""

    def __init__(
        self,
        spec: Callable[[], DesiredState],
        claims: Claims,
        agent: str,
        meta_ready: Callable[[], bool],
        prefer: Callable[[str], bool],
        on_change: Callable[[], None],
    ) -> None:
        self.spec = spec
        self.claims = claims
        self.agent = agent
        self.meta_ready = meta_ready
        self.prefer = prefer
        self.on_change = on_change
        self.status = BackupStatus()
        self._dir: str | None = None
        self._retry_at = 0.0

    def _set(self, **changes: Any) -> None:
        status = replace(self.status, **changes)
        if status != self.status:
            self.status = status
            self.on_change()

    async def run(self, session: aiohttp.ClientSession) -> None:
        """For ever; each pass decides once and waits (a failed pass is said, never fatal)."""
        while True:
            try:
                wait_s = await self._pass(session)
            except Exception as err:  # the schedule must outlive any failure of one pass
                log.exception("backup_schedule_failed")
                self._set(
                    state="failing", last_error=f"internal error: {err!r}", last_error_at=datetime.now(UTC)
                )
                wait_s = RECHECK_S
            await asyncio.sleep(wait_s)

    async def _pass(self, session: aiohttp.ClientSession) -> float:
        spec = self.spec()
        section = spec.backup
        if section.dir is None:
            if self.status.enabled:
                with contextlib.suppress(etcd.EtcdError):
                    await self.claims.unclaim(CLAIM)
                self._dir = None
                self.status = BackupStatus()
                self.on_change()
            return RECHECK_S
        if section.dir != self._dir:  # started, or a reload changed it: continue the series on disk
            self._dir = section.dir
            last = await asyncio.to_thread(newest, Path(section.dir), spec.cluster.name)
            self._set(last_success=last, last_success_at=taken_at_unix(last) if last else None)
        now = time.time()
        due = max(decide.next_due(self.status.last_success_at, section.interval, now), self._retry_at)
        self._set(
            enabled=True,
            dir=section.dir,
            interval_s=section.interval,
            keep=section.keep,
            next_at=datetime.fromtimestamp(due, UTC),
        )
        if due > now:
            if self.status.state in ("off", "taking"):
                self._set(state="waiting", detail=None)
            return min(RECHECK_S, due - now)
        if not self.meta_ready():
            self._set(state="waiting", detail="meta is not ready")
            return RECHECK_S
        retry = decide.retry_s(section.interval)
        try:
            holder = await self.claims.claim(CLAIM, {"dir": section.dir, "interval_s": section.interval})
        except etcd.EtcdError as err:
            self._retry_at = now + retry
            self._set(state="waiting", detail=f"coordination unavailable: {err}")
            return retry
        if holder is not None:
            self._retry_at = now + section.interval
            self._set(state="other_agent", holder=holder, detail=f"the agent on {holder} takes them")
            return RECHECK_S
        self._set(state="taking", holder=self.agent, detail=None)
        try:
            tool = etcdutl.locate(section.etcdutl)
            async with asyncio.timeout(TAKE_TIMEOUT_S):
                taken = await take(spec, session, tool, Path(section.dir), self.prefer, directory=True)
        except (BackupError, etcdutl.EtcdutlError, OSError, TimeoutError) as err:
            if isinstance(err, TimeoutError):  # an OSError too: said before the others
                why = f"not done within {TAKE_TIMEOUT_S:g}s"
            elif isinstance(err, OSError):
                why = f"{err.strerror or err}: {err.filename or ''}"
            else:
                why = str(err)
            log.error("backup_failed", error=why)
            self._retry_at = now + retry
            self._set(state="failing", last_error=why, last_error_at=datetime.now(UTC), detail=None)
            return retry
        self._retry_at = 0.0
        pruned = await asyncio.to_thread(prune, Path(section.dir), spec.cluster.name, section.keep)
        log.info(
            "backup_taken",
            path=taken.path,
            revision=taken.manifest.revision,
            size=taken.manifest.size,
            duration_s=taken.manifest.duration_s,
            pruned=len(pruned),
        )
        self._set(
            state="waiting",
            last_success=taken,
            last_success_at=taken_at_unix(taken),
            pruned=tuple(pruned),
            detail=None,
        )
        return 0.0
