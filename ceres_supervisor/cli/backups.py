"""`ceres-supervisor backup` and `ceres-supervisor restore`: CeresMeta's metadata saved and put back.

Exit codes. backup: 0 written and verified; 1 not taken (no healthy meta member, the stream broke,
etcdutl refused the snapshot, the target cannot be written: nothing is left behind); 2 invalid
desired-state file or options. restore: 0 restored (or nothing of this machine to restore); 1
refused or failed, with the data as it was (a daemon answers for the file, a container of the
cluster runs on this machine, Docker cannot be asked, etcdutl failed); 2 invalid desired-state
file or options; 5 the backup is refused (its checksum or size differs from its manifest, its
manifest is missing, or it is a backup of another cluster, flavor or set of meta members).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any, Final

import aiohttp

from ceres_supervisor.adapters import etcdutl, logs
from ceres_supervisor.adapters.engine import Engine, EngineError
from ceres_supervisor.cli import client, oneshot
from ceres_supervisor.desired import containers as desired_mod
from ceres_supervisor.desired import loading, secrets
from ceres_supervisor.model import backups as model
from ceres_supervisor.model.backups import Taken
from ceres_supervisor.model.spec import DesiredState
from ceres_supervisor.observation import observer
from ceres_supervisor.operations import backups, restores

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_INVALID: Final = 2
EXIT_BACKUP_REFUSED: Final = 5


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


async def _take(spec: DesiredState, tool: str, output: str | None) -> Taken:
    """`-o DIR/` (a trailing slash) is a directory even before it exists."""
    path = Path(output) if output else None
    directory = output is not None and output.endswith("/")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        return await backups.take(spec, session, tool, path, directory=directory)


def cmd_backup(args: argparse.Namespace) -> int:
    spec = loading.load(args.config).spec
    logs.configure("warning")
    try:
        tool = etcdutl.locate(spec.backup.etcdutl)
        taken = asyncio.run(_take(spec, tool, args.output))
    except (backups.BackupError, etcdutl.EtcdutlError) as err:
        _error(f"no backup taken: {err}")
        return EXIT_FAILED
    except OSError as err:
        _error(f"no backup taken: {err.strerror or err}: {err.filename or ''}")
        return EXIT_FAILED
    m = taken.manifest
    print(
        f"{taken.path}: cluster {m.cluster} ({m.flavor} {m.version}), revision {m.revision}, "
        f"{m.total_keys} keys, {m.size} bytes, from {m.source}, in {m.duration_s:.2f}s"
    )
    print(f"sha256 {m.sha256}; manifest {model.manifest_path_of(taken.path)}")
    return EXIT_OK


def _daemon_answers(config: str) -> str | None:
    ep = client.endpoint(None, None, config)
    try:
        asyncio.run(client.call(ep, "GET", "/healthz", timeout_s=2.0))
    except client.Unreachable:
        return None
    return ep.where


def cmd_restore(args: argparse.Namespace) -> int:
    loaded = loading.load(args.config)
    spec = loaded.spec
    logs.configure("warning")
    try:
        checked = asyncio.run(restores.check(Path(args.source), spec))
    except restores.BackupRefused as err:
        _error(f"backup refused: {err}")
        return EXIT_BACKUP_REFUSED
    where = _daemon_answers(args.config)
    if where is not None:
        _error(
            f"a ceres-supervisor daemon answers at {where}: it runs the cluster. Stop it first "
            "(systemctl stop ceres-supervisor), then `ceres-supervisor down`, then restore."
        )
        return EXIT_FAILED
    place = asyncio.run(oneshot.decide_locality(loaded, args.host))
    engine = Engine(spec.cluster.name, base_url=args.docker_url)
    try:
        listed = asyncio.run(observer.Observer(engine, place).containers())
    except EngineError as err:
        _error(f"cannot tell whether the cluster runs on this machine: {err}")
        return EXIT_FAILED
    finally:
        engine.close()
    running = sorted(c.node for c in listed if c.is_running)
    if running:
        _error(
            f"containers of cluster {spec.cluster.name} run on this machine ({', '.join(running)}): "
            f"stop them first with `ceres-supervisor down -c {args.config}`"
        )
        return EXIT_FAILED
    desired = desired_mod.build(spec, secrets.resolve, place.is_local)
    if not any(n.is_local for n in desired.meta):
        print(f"no meta member of cluster {spec.cluster.name} runs on this machine: nothing to restore here")
        return EXIT_OK
    try:
        tool = etcdutl.locate(spec.backup.etcdutl)
        restored = asyncio.run(restores.restore(desired, checked, tool))
    except (restores.RestoreError, etcdutl.EtcdutlError) as err:
        _error(f"not restored: {err}")
        return EXIT_FAILED
    except OSError as err:  # making the fresh directories: nothing was moved
        _error(f"not restored: {err.strerror or err}: {err.filename or ''}")
        return EXIT_FAILED
    _report(args.config, desired, checked, restored)
    return EXIT_OK


def _report(
    config: str,
    desired: desired_mod.DesiredCluster,
    checked: restores.Checked,
    restored: list[restores.Restored],
) -> None:
    m = checked.manifest
    for r in restored:
        before = f"previous data moved to {r.moved_aside}" if r.moved_aside else "it had no previous data"
        print(f"restored {r.node} in {r.data_dir} ({before})")
    for note in checked.notes:
        print(f"note: {note}")
    print(
        f"\nCeresMeta's metadata is now as it was at {m.taken_at} "
        f"(revision {m.revision}, {checked.snapshot.name})."
    )
    print(
        f"- Tables created after {m.taken_at} are not in it: their data stays on the CeresDB nodes' disks "
        "(or in the object store), orphaned: nothing lists or removes it. Tables dropped since are "
        "listed again, possibly without their data."
    )
    print(
        f"- Start the cluster: `ceres-supervisor run -c {config}` (or systemctl start ceres-supervisor). It "
        "starts every meta member together, then each CeresDB node once: CeresDB keeps its shard versions "
        "only in memory, so every node restarts, and none may run across a restore."
    )
    remote = restores.remote_members(desired)
    if remote:
        names = ", ".join(f"{n.name} ({n.host})" for n in remote)
        print(
            f"- {names} run on other machines: restore them there from this same backup, before any "
            "supervisor of the cluster starts (each machine restores its own members)."
        )
    kept = restores.cleanup_hint(restored)
    if kept:
        print(f"- The previous data is kept: remove {' '.join(kept)} yourself once the cluster is healthy.")


def add_parsers(sub: Any, host_arg: Any) -> None:
    """The two subcommands, on the main parser's subparsers (`host_arg` adds `--host`)."""
    backup = sub.add_parser(
        "backup", help="snapshot CeresMeta's etcd (the whole keyspace) with its SHA-256 and a manifest"
    )
    backup.add_argument("-c", "--config", default=client.DEFAULT_CONFIG, metavar="FILE")
    backup.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="the snapshot file, or a directory for <cluster>-<time>.db (default: backup.dir, else here)",
    )
    backup.set_defaults(handler=cmd_backup)

    restore = sub.add_parser(
        "restore", help="put a backup back into this machine's meta members (the cluster stopped)"
    )
    restore.add_argument("-c", "--config", required=True, metavar="FILE")
    restore.add_argument(
        "--from", dest="source", required=True, metavar="PATH", help="the snapshot (or its manifest)"
    )
    restore.add_argument("--docker-url", help=argparse.SUPPRESS)
    host_arg(restore)
    restore.set_defaults(handler=cmd_restore)
