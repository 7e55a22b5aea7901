"""The `ceres-supervisor` subcommands and their exit codes.

Exit codes (SPEC section 5): 0 success; 2 invalid desired state or usage; other codes per
command. Input errors print one line per problem, never a traceback and never a secret value.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import structlog

from . import __version__, api, app, client, executing, files, loading, logs, rendering, secrets, topology
from .engine import Engine, EngineError
from .errors import CeresError, DesiredStateError

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_INVALID: Final = 2
EXIT_INTERNAL: Final = 70


def _print_warnings(loaded: loading.Loaded) -> None:
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)


def cmd_validate(args: argparse.Namespace) -> int:
    loaded = loading.load(args.config)
    _print_warnings(loaded)
    spec = loaded.spec
    print(
        f"{loaded.source}: valid ({spec.release.label()}, cluster {spec.cluster.name}, "
        f"{len(spec.meta.nodes)} meta + {len(spec.ceresdb.nodes)} CeresDB nodes)"
    )
    return EXIT_OK


def cmd_render(args: argparse.Namespace) -> int:
    loaded = loading.load(args.config)
    _print_warnings(loaded)
    out = Path(args.output)
    for node in rendering.render(loaded.spec):
        for path in files.write_node(out / node.name, node, secrets.resolve):
            print(path)
    return EXIT_OK


def _load_for_daemon(path: str) -> loading.Loaded:
    """Load and check everything that must hold before any container is touched."""
    loaded = loading.load(path)
    spec = loaded.spec
    problem = topology.problem(spec)
    if problem is not None:
        raise DesiredStateError(loaded.source, [problem])
    return loaded


def cmd_run(args: argparse.Namespace) -> int:
    loaded = _load_for_daemon(args.config)
    logs.configure(args.log_level or loaded.spec.supervisor.log_level)
    log = structlog.get_logger("ceres_supervisor")
    for warning in loaded.warnings:
        log.warning("desired_state_warning", path=warning.path, detail=warning.message)
    return asyncio.run(_run_daemon(loaded, args))


async def _run_daemon(loaded: loading.Loaded, args: argparse.Namespace) -> int:
    supervisor = app.Supervisor(loaded, config_path=args.config, docker_url=args.docker_url)
    server = api.ApiServer(supervisor)
    try:
        await server.start()  # before the loop: a taken address fails before any container is touched
    except (OSError, ValueError) as err:
        print(f"error: cannot serve the status API on {server.where}: {err}", file=sys.stderr)
        supervisor.engine.close()
        return EXIT_FAILED
    return await supervisor.run(extra_tasks=[("status-api", server.serve_forever)])


def cmd_plan(args: argparse.Namespace) -> int:
    loaded = _load_for_daemon(args.config)
    _print_warnings(loaded)
    logs.configure("warning")
    try:
        desired_cluster, observation, result = asyncio.run(app.plan_once(loaded, args.docker_url))
    except EngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    spec = loaded.spec
    print(
        f"cluster {spec.cluster.name} ({spec.release.label()}), spec {desired_cluster.spec_hash}: "
        f"{result.meta_detail}"
    )
    actions = {a.node: a for a in result.actions}
    rows = [("NODE", "ROLE", "STATE", "ACTION", "WHY")]
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
        rows.append((node.name, node.role, str(view.state), action.kind if action else "-", why))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(col.ljust(w) for col, w in zip(row[:4], widths, strict=True)) + "  " + row[4])
    managed = _running_daemon_nodes(args.config)
    if managed is not None:
        print("A daemon is running for this cluster: this is what `ceres-supervisor reload` would do.")
    for orphan in observation.orphans:
        if managed is not None and orphan.node in managed:
            print(f"remove: container {orphan.name} (node {orphan.node!r} left the file; data kept)")
        else:
            why = f"node {orphan.node!r} is not in the file; `down` removes it"
            print(f"orphan: container {orphan.name} ({why})")
    if any(v.state == "blocked" for v in result.views.values()):
        print("CeresDB nodes start once meta is ready (the next cycles of `run`).")
    return EXIT_OK


def _daemon_answers(config: str) -> str | None:
    ep = client.endpoint(None, None, config)
    try:
        asyncio.run(client.call(ep, "GET", "/healthz", timeout_s=2.0))
    except client.Unreachable:
        return None
    return ep.where


def _running_daemon_nodes(config: str) -> set[str] | None:
    """The nodes a daemon answering for this file manages now, or None when none answers."""
    try:
        code, doc = asyncio.run(client.call(client.endpoint(None, None, config), "GET", "/v1/status", 2.0))
    except client.Unreachable:
        return None
    if code != 200 or not isinstance(doc, dict):
        return None
    return {str(n.get("name")) for n in doc.get("nodes") or [] if isinstance(n, dict)}


def cmd_down(args: argparse.Namespace) -> int:
    loaded = loading.load(args.config)
    spec = loaded.spec
    where = None if args.force else _daemon_answers(args.config)
    if where is not None:
        print(
            f"error: a ceres-supervisor daemon answers at {where}; it would start the containers again. "
            "Stop it first (systemctl stop ceres-supervisor), or pass --force.",
            file=sys.stderr,
        )
        return EXIT_FAILED
    logs.configure("info")
    engine = Engine(spec.cluster.name, base_url=args.docker_url)
    try:
        problems = asyncio.run(executing.stop_cluster(engine, spec.supervisor.stop_timeout, remove=True))
    except EngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        engine.close()
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    print(
        f"cluster {spec.cluster.name}: containers stopped and removed; data kept under "
        f"{spec.cluster.state_dir}/data"
    )
    return EXIT_FAILED if problems else EXIT_OK


EXIT_UNREACHABLE: Final = 3
EXIT_REFUSED: Final = 4


def _api_args(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "-c", "--config", metavar="FILE", help=f"read supervisor.listen from FILE ({client.DEFAULT_CONFIG})"
    )
    where.add_argument("--url", help="the API's base URL, e.g. http://127.0.0.1:5480")
    where.add_argument("--socket", metavar="PATH", help="the API's unix socket")
    parser.add_argument(
        "--token-file", metavar="FILE", help="bearer token (default: the file's supervisor.token_file)"
    )


def _call(args: argparse.Namespace, method: str, path: str, timeout_s: float = 10.0) -> tuple[int, object]:
    ep = client.endpoint(args.url, args.socket, args.config, args.token_file)
    return asyncio.run(client.call(ep, method, path, timeout_s))


def cmd_status(args: argparse.Namespace) -> int:
    try:
        code, body = _call(args, "GET", "/v1/status")
    except client.Unreachable as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if code != 200 or not isinstance(body, dict):
        print(f"error: the daemon refused: HTTP {code}: {body}", file=sys.stderr)
        return EXIT_REFUSED
    print(json.dumps(body, indent=2) if args.json else client.table(body))
    return EXIT_OK if (body.get("cluster") or {}).get("state") == "healthy" else EXIT_FAILED


def cmd_reload(args: argparse.Namespace) -> int:
    try:
        code, body = _call(args, "POST", "/v1/reload", timeout_s=90.0)
    except client.Unreachable as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if code == 200:
        print("reload applied")
        return EXIT_OK
    if code == 422 and isinstance(body, dict):
        print(
            f"reload refused, the daemon keeps its last good desired state:\n{body.get('error')}",
            file=sys.stderr,
        )
        return EXIT_INVALID
    print(f"error: HTTP {code}: {body}", file=sys.stderr)
    return EXIT_REFUSED if code in (401, 403) else EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ceres-supervisor",
        description="Keeps a CeresDB/HoraeDB cluster (WithMeta mode) running on a Docker host.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = sub.add_parser("validate", help="check a desired-state file (exit 0 valid, 2 invalid)")
    validate.add_argument("-c", "--config", required=True, metavar="FILE")
    validate.set_defaults(handler=cmd_validate)

    render = sub.add_parser("render", help="write every node's TOML and environment to DIR/<node>/")
    render.add_argument("-c", "--config", required=True, metavar="FILE")
    render.add_argument("-o", "--output", required=True, metavar="DIR")
    render.set_defaults(handler=cmd_render)

    run = sub.add_parser("run", help="the daemon, in the foreground")
    run.add_argument("-c", "--config", required=True, metavar="FILE")
    run.add_argument("--log-level", choices=sorted(logs.LEVELS), help="overrides supervisor.log_level")
    run.add_argument("--docker-url", help="Docker Engine address (default: DOCKER_HOST or the local socket)")
    run.set_defaults(handler=cmd_run)

    plan = sub.add_parser("plan", help="what `run` would change now, and why, without doing it")
    plan.add_argument("-c", "--config", required=True, metavar="FILE")
    plan.add_argument("--docker-url", help=argparse.SUPPRESS)
    plan.set_defaults(handler=cmd_plan)

    down = sub.add_parser("down", help="stop CeresDB nodes then meta and remove the containers; data is kept")
    down.add_argument("-c", "--config", required=True, metavar="FILE")
    down.add_argument("--docker-url", help=argparse.SUPPRESS)
    down.add_argument(
        "--force", action="store_true", help="even if a daemon answers on the file's listen address"
    )
    down.set_defaults(handler=cmd_down)

    status = sub.add_parser("status", help="the cluster and its nodes (exit 0 healthy, 1 not, 3 unreachable)")
    _api_args(status)
    status.add_argument("--json", action="store_true", help="print /v1/status as it is")
    status.set_defaults(handler=cmd_status)

    reload = sub.add_parser("reload", help="re-read the file in the running daemon (as SIGHUP)")
    _api_args(reload)
    reload.set_defaults(handler=cmd_reload)
    return parser


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        code: int = args.handler(args)
        return code
    except DesiredStateError as err:
        print(err.render(), file=sys.stderr)
        return EXIT_INVALID
    except CeresError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as err:
        print(f"error: {err.strerror or err}: {err.filename or ''}", file=sys.stderr)
        return EXIT_INTERNAL
    except KeyboardInterrupt:
        return 130
