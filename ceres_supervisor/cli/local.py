"""The commands that work on this machine without a running daemon: validate, render, run (the
daemon itself), plan, down, version and completion. Each returns an exit code (`exits`) or
raises `exits.Failure`; with `--json` each prints one JSON document (its schema is in README).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import structlog

from ceres_supervisor import __version__
from ceres_supervisor.actions import executor
from ceres_supervisor.adapters import logs
from ceres_supervisor.adapters.engine import Engine, EngineError
from ceres_supervisor.cli import client, exits, oneshot
from ceres_supervisor.cli import upgrades as upgrade_cli
from ceres_supervisor.cli.exits import Failure
from ceres_supervisor.daemon import app
from ceres_supervisor.decisions import upgrades as upgrades_decide
from ceres_supervisor.decisions.planning import Plan
from ceres_supervisor.desired import files, loading, rendering, secrets, topology
from ceres_supervisor.desired.containers import DesiredCluster
from ceres_supervisor.model.addresses import advertise_url
from ceres_supervisor.model.errors import DesiredStateError
from ceres_supervisor.model.observed import Observation
from ceres_supervisor.observation import observer
from ceres_supervisor.surfaces import api


def config_path(args: argparse.Namespace) -> str:
    return str(args.config or client.DEFAULT_CONFIG)


def require_file(path: str) -> None:
    """A missing desired-state file is its own error (exit 66), not an invalid one."""
    file = Path(path)
    if not file.is_file():
        why = "no such file" if not file.exists() else "not a file"
        raise Failure(exits.NO_FILE, f"cannot read {path}: {why} (give the desired-state file with -c FILE)")


def load(args: argparse.Namespace) -> loading.Loaded:
    path = config_path(args)
    require_file(path)
    return loading.load(path)


def print_json(doc: object) -> None:
    print(json.dumps(doc, indent=2), flush=True)


def _warnings(loaded: loading.Loaded) -> list[dict[str, str]]:
    return [{"path": w.path, "message": w.message} for w in loaded.warnings]


def print_warnings(loaded: loading.Loaded) -> None:
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)


def validate(args: argparse.Namespace) -> int:
    path = config_path(args)
    require_file(path)
    try:
        loaded = loading.load(path)
    except DesiredStateError as err:
        if not args.json:
            raise
        problems = [{"path": p.path, "message": p.message} for p in err.problems]
        print_json(
            {
                "file": path,
                "valid": False,
                "cluster": None,
                "release": None,
                "nodes": None,
                "warnings": [],
                "problems": problems,
            }
        )
        return exits.INVALID
    spec = loaded.spec
    if args.json:
        print_json(
            {
                "file": path,
                "valid": True,
                "cluster": spec.cluster.name,
                "release": spec.release.label(),
                "nodes": {"meta": len(spec.meta.nodes), "ceresdb": len(spec.ceresdb.nodes)},
                "warnings": _warnings(loaded),
                "problems": [],
            }
        )
        return exits.OK
    print_warnings(loaded)
    print(
        f"{loaded.source}: valid ({spec.release.label()}, cluster {spec.cluster.name}, "
        f"{len(spec.meta.nodes)} meta + {len(spec.ceresdb.nodes)} CeresDB nodes)"
    )
    return exits.OK


def render(args: argparse.Namespace) -> int:
    loaded = load(args)
    out = Path(args.output)
    written = [
        str(path)
        for node in rendering.render(loaded.spec)
        for path in files.write_node(out / node.name, node, secrets.resolve)
    ]
    if args.json:
        print_json({"files": written, "warnings": _warnings(loaded)})
    else:
        print_warnings(loaded)
        print("\n".join(written))
    return exits.OK


def _load_for_daemon(args: argparse.Namespace) -> loading.Loaded:
    """Load and check everything that must hold before any container is touched."""
    loaded = load(args)
    problem = topology.problem(loaded.spec)
    if problem is not None:
        raise DesiredStateError(loaded.source, [problem])
    return loaded


def run(args: argparse.Namespace) -> int:
    loaded = loading.with_listen(_load_for_daemon(args), args.listen)
    logs.configure(args.log_level or loaded.spec.supervisor.log_level, json=True if args.json else None)
    log = structlog.get_logger("ceres_supervisor")
    for warning in loaded.warnings:
        log.warning("desired_state_warning", path=warning.path, detail=warning.message)
    return asyncio.run(_run_daemon(loaded, args))


async def _run_daemon(loaded: loading.Loaded, args: argparse.Namespace) -> int:
    place = await oneshot.decide_locality(loaded, args.host)
    stores = [url.strip().rstrip("/") for url in args.store.split(",")] if args.store else None
    if args.advertise or stores:
        try:
            advertise_url(loaded.spec.supervisor.listen, args.host or "127.0.0.1", args.advertise)
            if stores and not all(u.startswith(("http://", "https://")) for u in stores):
                raise ValueError(f"--store {args.store!r}: each member is an http:// URL")
        except ValueError as err:
            raise Failure(exits.USAGE, str(err)) from None
    supervisor = app.Supervisor(
        loaded,
        place,
        config_path=config_path(args),
        docker_url=args.docker_url,
        listen=args.listen,
        advertise=args.advertise,
        store_endpoints=stores,
    )
    server = api.ApiServer(supervisor)
    try:
        await server.start()  # before the loop: a taken address fails before any container is touched
    except (OSError, ValueError) as err:
        supervisor.engine.close()
        raise Failure(exits.NOT_OK, f"cannot serve the status API on {server.where}: {err}") from None
    return await supervisor.run(server)


def daemon_answers(args: argparse.Namespace) -> str | None:
    """Where a daemon answers for this file, or None."""
    try:
        ep = client.endpoint(None, None, config_path(args))
        asyncio.run(client.call(ep, "GET", "/healthz", timeout_s=2.0))
    except Failure:
        return None
    return ep.where


def plan(args: argparse.Namespace) -> int:
    loaded = _load_for_daemon(args)
    logs.configure("warning")
    try:
        place = asyncio.run(oneshot.decide_locality(loaded, args.host))
        desired_cluster, observation, result = asyncio.run(oneshot.plan_once(loaded, place, args.docker_url))
    except EngineError as err:
        raise Failure(exits.UNREACHABLE, str(err)) from None
    spec = loaded.spec
    actions = {a.node: a for a in result.actions}
    nodes: list[dict[str, Any]] = []
    for node in desired_cluster.nodes:
        view = result.views[node.name]
        action = actions.get(node.name)
        c = observation.containers.get(node.name)
        if action is not None:
            why = action.reason
        elif c is not None and c.spec_hash == node.spec_hash:
            why = view.reason or ("running, spec matches: left alone" if c.is_running else "spec matches")
        else:
            why = view.reason or ""
        nodes.append(
            {
                "node": node.name,
                "role": node.role,
                "state": str(view.state),
                "action": action.kind if action else None,
                "why": why,
            }
        )
    daemon = daemon_answers(args)
    orphans = [{"name": o.name, "node": o.node} for o in observation.orphans]
    upgrade = _upgrade(args, desired_cluster, observation, result, daemon is not None)
    if args.json:
        print_json(
            {
                "cluster": spec.cluster.name,
                "release": spec.release.label(),
                "spec_hash": desired_cluster.spec_hash,
                "meta": result.meta_detail,
                "daemon_running": daemon is not None,
                "nodes": nodes,
                "orphans": orphans,
                "upgrade": upgrade_cli.document(upgrade),
                "warnings": _warnings(loaded),
            }
        )
        return exits.INVALID if upgrade.refused is not None else exits.OK
    print_warnings(loaded)
    print(
        f"cluster {spec.cluster.name} ({spec.release.label()}), spec {desired_cluster.spec_hash}: "
        f"{result.meta_detail}"
    )
    rows = [("NODE", "ROLE", "STATE", "ACTION", "WHY")]
    rows += [(n["node"], n["role"], n["state"], n["action"] or "-", n["why"]) for n in nodes]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print(
            "  ".join(col.ljust(w) for col, w in zip(row[:4], widths, strict=True))
            + "  "
            + exits.one_line(row[4])
        )
    if daemon is not None:
        print("A daemon is running for this cluster: this is what `ceres-supervisor reload` would do.")
    for orphan in orphans:
        print(f"remove: container {orphan['name']} (node {orphan['node']!r} is not in the file; data kept)")
    if any(n["state"] == "blocked" for n in nodes):
        print("CeresDB nodes start once meta is ready (the next cycles of `run`).")
    missing = None
    if upgrade.pending:
        try:
            missing = asyncio.run(upgrade_cli.missing_images(desired_cluster, args.docker_url))
        except EngineError:
            missing = None
    return upgrade_cli.print_plan(upgrade, missing, spec.supervisor.start_timeout)


def _upgrade(
    args: argparse.Namespace,
    desired: DesiredCluster,
    observation: Observation,
    result: Plan,
    daemon: bool,
) -> upgrades_decide.Upgrade:
    """The upgrade `plan` sees: another machine's nodes as a daemon of the cluster says they run."""
    remote = None
    if daemon and any(not n.is_local for n in desired.nodes):
        try:
            ep = client.endpoint(None, None, config_path(args))
            remote = upgrade_cli.remote_releases(asyncio.run(client.call(ep, "GET", "/v1/upgrade"))[1])
        except Failure:
            remote = None
    return upgrade_cli.assess(desired, observation, result, remote)


def down(args: argparse.Namespace) -> int:
    loaded = load(args)
    spec = loaded.spec
    where = None if args.force else daemon_answers(args)
    if where is not None:
        raise Failure(
            exits.CONFLICT,
            f"a ceres-supervisor daemon answers at {where}; it would start the containers again. "
            "Stop it first (systemctl stop ceres-supervisor), or pass --force.",
        )
    logs.configure("warning" if args.json else "info")
    engine = Engine(spec.cluster.name, base_url=args.docker_url)
    try:
        place = asyncio.run(oneshot.decide_locality(loaded, args.host))
        watcher = observer.Observer(engine, place)
        problems = asyncio.run(
            executor.stop_cluster(engine, watcher.containers, spec.supervisor.stop_timeout, True)
        )
    except EngineError as err:
        raise Failure(exits.UNREACHABLE, str(err)) from None
    finally:
        engine.close()
    data = f"{spec.cluster.state_dir}/data"
    if args.json:
        print_json(
            {
                "cluster": spec.cluster.name,
                "removed": not problems,
                "problems": [exits.one_line(p) for p in problems],
                "data_kept": data,
            }
        )
    else:
        for problem in problems:
            print(f"error: {exits.one_line(problem)}", file=sys.stderr)
        print(f"cluster {spec.cluster.name}: containers stopped and removed; data kept under {data}")
    return exits.NOT_OK if problems else exits.OK


def versions() -> dict[str, str]:
    try:
        sdk = metadata.version("docker")
    except metadata.PackageNotFoundError:
        sdk = "not installed"
    return {"version": __version__, "python": platform.python_version(), "docker_sdk": sdk}


def version_line() -> str:
    v = versions()
    return f"ceres-supervisor {v['version']} (Python {v['python']}, Docker SDK {v['docker_sdk']})"


def version(args: argparse.Namespace) -> int:
    print_json(versions()) if args.json else print(version_line())
    return exits.OK


def node_names(path: str) -> list[str]:
    """Node names of the file, read leniently (secrets need not be available): for completion."""
    try:
        document = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError):
        return []
    names = []
    for section in ("meta", "ceresdb"):
        table = document.get(section)
        for node in table.get("nodes", []) if isinstance(table, dict) else []:
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                names.append(node["name"])
    return names
