"""`ceres-supervisor backup` and `ceres-supervisor restore`: CeresMeta's metadata saved and put back.

Exit codes (`exits`). backup: 0 written and verified; 1 not taken (no healthy meta member, the
stream broke, etcdutl refused the snapshot, the target cannot be written: nothing is left behind);
2 invalid desired-state file; 66 no file. restore: 0 restored (or nothing of this machine to
restore); 1 failed, with the data as it was (etcdutl failed, the fresh directories cannot be
made); 3 Docker cannot be asked whether the cluster runs here; 6 a daemon answers for the file,
or a container of the cluster runs on this machine; 7 the backup is refused (its checksum or size
differs from its manifest, its manifest is missing, or it is a backup of another cluster, flavor
or set of meta members). With `--json`, one document (its schema is in README).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import aiohttp

from ceres_supervisor.adapters import etcdutl, logs
from ceres_supervisor.adapters.engine import Engine, EngineError
from ceres_supervisor.cli import exits, local, oneshot
from ceres_supervisor.cli.exits import Failure
from ceres_supervisor.desired import containers as desired_mod
from ceres_supervisor.desired import secrets
from ceres_supervisor.model import backups as model
from ceres_supervisor.model.backups import Taken
from ceres_supervisor.model.spec import DesiredState
from ceres_supervisor.observation import observer
from ceres_supervisor.operations import backups, restores


async def _take(spec: DesiredState, tool: str, output: str | None) -> Taken:
    """`-o DIR/` (a trailing slash) is a directory even before it exists."""
    path = Path(output) if output else None
    directory = output is not None and output.endswith("/")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        return await backups.take(spec, session, tool, path, directory=directory)


def backup(args: argparse.Namespace) -> int:
    spec = local.load(args).spec
    logs.configure("warning")
    try:
        tool = etcdutl.locate(spec.backup.etcdutl)
        taken = asyncio.run(_take(spec, tool, args.output))
    except (backups.BackupError, etcdutl.EtcdutlError) as err:
        raise Failure(exits.NOT_OK, f"no backup taken: {err}") from None
    except OSError as err:
        raise Failure(exits.NOT_OK, f"no backup taken: {err.strerror or err}: {err.filename or ''}") from None
    m = taken.manifest
    manifest_path = model.manifest_path_of(str(taken.path))
    if args.json:
        manifest = {**dataclasses.asdict(m), "members": list(m.members)}
        local.print_json({"path": str(taken.path), "manifest_path": manifest_path, "manifest": manifest})
        return exits.OK
    print(
        f"{taken.path}: cluster {m.cluster} ({m.flavor} {m.version}), revision {m.revision}, "
        f"{m.total_keys} keys, {m.size} bytes, from {m.source}, in {m.duration_s:.2f}s"
    )
    print(f"sha256 {m.sha256}; manifest {manifest_path}")
    return exits.OK


def restore(args: argparse.Namespace) -> int:
    loaded = local.load(args)
    spec = loaded.spec
    config = local.config_path(args)
    logs.configure("warning")
    try:
        checked = asyncio.run(restores.check(Path(args.source), spec))
    except restores.BackupRefused as err:
        raise Failure(exits.BACKUP_REFUSED, f"backup refused: {err}") from None
    where = local.daemon_answers(args)
    if where is not None:
        raise Failure(
            exits.CONFLICT,
            f"a ceres-supervisor daemon answers at {where}: it runs the cluster. Stop it first "
            "(systemctl stop ceres-supervisor), then `ceres-supervisor down`, then restore.",
        )
    place = asyncio.run(oneshot.decide_locality(loaded, args.host))
    engine = Engine(spec.cluster.name, base_url=args.docker_url)
    try:
        listed = asyncio.run(observer.Observer(engine, place).containers())
    except EngineError as err:
        raise Failure(
            exits.UNREACHABLE, f"cannot tell whether the cluster runs on this machine: {err}"
        ) from None
    finally:
        engine.close()
    running = sorted(c.node for c in listed if c.is_running)
    if running:
        raise Failure(
            exits.CONFLICT,
            f"containers of cluster {spec.cluster.name} run on this machine ({', '.join(running)}): "
            f"stop them first with `ceres-supervisor down -c {config}`",
        )
    desired = desired_mod.build(spec, secrets.resolve, place.is_local)
    if not any(n.is_local for n in desired.meta):
        if args.json:
            local.print_json(_document(desired, checked, []))
        else:
            print(
                f"no meta member of cluster {spec.cluster.name} runs on this machine: nothing to restore here"
            )
        return exits.OK
    try:
        tool = etcdutl.locate(spec.backup.etcdutl)
        restored = asyncio.run(restores.restore(desired, checked, tool))
    except (restores.RestoreError, etcdutl.EtcdutlError) as err:
        raise Failure(exits.NOT_OK, f"not restored: {err}") from None
    except OSError as err:  # making the fresh directories: nothing was moved
        raise Failure(exits.NOT_OK, f"not restored: {err.strerror or err}: {err.filename or ''}") from None
    if args.json:
        local.print_json(_document(desired, checked, restored))
    else:
        _report(config, desired, checked, restored)
    return exits.OK


def _document(
    desired: desired_mod.DesiredCluster, checked: restores.Checked, restored: list[restores.Restored]
) -> dict[str, Any]:
    m = checked.manifest
    return {
        "snapshot": str(checked.snapshot),
        "taken_at": m.taken_at,
        "revision": m.revision,
        "restored": [
            {"node": r.node, "data_dir": str(r.data_dir), "moved_aside": str(r.moved_aside or "") or None}
            for r in restored
        ],
        "notes": list(checked.notes),
        "remote": [{"node": n.name, "host": n.host} for n in restores.remote_members(desired)],
    }


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
