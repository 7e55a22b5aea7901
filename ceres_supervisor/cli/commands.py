"""The `ceres-supervisor` subcommands and their exit codes.

Exit codes (SPEC section 5): 0 success; 2 invalid desired state or usage; other codes per
command. Input errors print one line per problem, never a traceback and never a secret value.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
import tomllib
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Final

import structlog

from ceres_supervisor import __version__
from ceres_supervisor.actions import executor
from ceres_supervisor.adapters import logs
from ceres_supervisor.adapters.engine import Engine, EngineError
from ceres_supervisor.cli import backups, client, completion, oneshot
from ceres_supervisor.cli import upgrades as upgrade_cli
from ceres_supervisor.daemon import app
from ceres_supervisor.desired import files, loading, rendering, secrets, topology
from ceres_supervisor.desired.locality import LocalityError
from ceres_supervisor.model.errors import CeresError, DesiredStateError, Problem
from ceres_supervisor.model.spec import advertise_url
from ceres_supervisor.observation import observer
from ceres_supervisor.surfaces import api

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_INVALID: Final = 2
EXIT_INTERNAL: Final = 70


def _version() -> str:
    """This version, and the Python and Docker SDK it runs with."""
    try:
        sdk = metadata.version("docker")
    except metadata.PackageNotFoundError:
        sdk = "not installed"
    return f"ceres-supervisor {__version__} (Python {platform.python_version()}, Docker SDK {sdk})"


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
    loaded = loading.with_listen(_load_for_daemon(args.config), args.listen)
    logs.configure(args.log_level or loaded.spec.supervisor.log_level)
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
            raise DesiredStateError(loaded.source, [Problem("--advertise/--store", str(err))]) from None
    supervisor = app.Supervisor(
        loaded,
        place,
        config_path=args.config,
        docker_url=args.docker_url,
        listen=args.listen,
        advertise=args.advertise,
        store_endpoints=stores,
    )
    server = api.ApiServer(supervisor)
    try:
        await server.start()  # before the loop: a taken address fails before any container is touched
    except (OSError, ValueError) as err:
        print(f"error: cannot serve the status API on {server.where}: {err}", file=sys.stderr)
        supervisor.engine.close()
        return EXIT_FAILED
    return await supervisor.run(server)


def cmd_plan(args: argparse.Namespace) -> int:
    loaded = _load_for_daemon(args.config)
    _print_warnings(loaded)
    logs.configure("warning")
    try:
        place = asyncio.run(oneshot.decide_locality(loaded, args.host))
        desired_cluster, observation, result = asyncio.run(oneshot.plan_once(loaded, place, args.docker_url))
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
    daemon = _daemon_answers(args.config)
    if daemon is not None:
        print("A daemon is running for this cluster: this is what `ceres-supervisor reload` would do.")
    for orphan in observation.orphans:
        print(f"remove: container {orphan.name} (node {orphan.node!r} is not in the file; data kept)")
    if any(v.state == "blocked" for v in result.views.values()):
        print("CeresDB nodes start once meta is ready (the next cycles of `run`).")
    remote = None
    if daemon is not None and any(not n.is_local for n in desired_cluster.nodes):
        try:
            remote = upgrade_cli.remote_releases(_call(_api_of(args), "GET", "/v1/upgrade")[1])
        except client.Unreachable:
            remote = None
    upgrade = upgrade_cli.assess(desired_cluster, observation, result, remote)
    missing = None
    if upgrade.pending:
        try:
            missing = asyncio.run(upgrade_cli.missing_images(desired_cluster, args.docker_url))
        except EngineError:
            missing = None
    return upgrade_cli.print_plan(upgrade, missing, spec.supervisor.start_timeout)


def _api_of(args: argparse.Namespace) -> argparse.Namespace:
    """The API arguments of a command that only has the file (`plan`)."""
    return argparse.Namespace(url=None, socket=None, config=args.config, token_file=None)


def _daemon_answers(config: str) -> str | None:
    ep = client.endpoint(None, None, config)
    try:
        asyncio.run(client.call(ep, "GET", "/healthz", timeout_s=2.0))
    except client.Unreachable:
        return None
    return ep.where


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
        place = asyncio.run(oneshot.decide_locality(loaded, args.host))
        watcher = observer.Observer(engine, place)
        problems = asyncio.run(
            executor.stop_cluster(engine, watcher.containers, spec.supervisor.stop_timeout, True)
        )
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
    """The whole cluster from /v1/cluster; this machine's view (/v1/status) with a note when the
    store cannot be read, or with --local."""
    note = None
    try:
        if not args.local:
            code, body = _call(args, "GET", "/v1/cluster")
            if code == 503 and isinstance(body, dict):
                detail = (body.get("coordination") or {}).get("detail")
                note = f"coordination unavailable ({detail}): this is the local view of this supervisor"
        if args.local or code in (404, 503):
            code, body = _call(args, "GET", "/v1/status")
    except client.Unreachable as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if code != 200 or not isinstance(body, dict):
        print(f"error: the daemon refused: HTTP {code}: {body}", file=sys.stderr)
        return EXIT_REFUSED
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        print(client.table(body))
        if note:
            print(note)
    return EXIT_OK if (body.get("cluster") or {}).get("state") == "healthy" and note is None else EXIT_FAILED


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


def _post(args: argparse.Namespace, path: str, body: Mapping[str, object]) -> tuple[int, object]:
    ep = client.endpoint(args.url, args.socket, args.config, args.token_file)
    return asyncio.run(client.call(ep, "POST", path, 10.0, body))


def _refusal(code: int, body: object) -> int:
    """Print why the daemon said no; the exit code for it."""
    error = body.get("error") if isinstance(body, dict) else body
    print(f"error: HTTP {code}: {error}", file=sys.stderr)
    if isinstance(body, dict) and body.get("known"):
        print(f"known nodes: {', '.join(map(str, body['known']))}", file=sys.stderr)
    if code in (401, 403):
        return EXIT_REFUSED
    return EXIT_INVALID if code in (400, 404) else EXIT_FAILED


def cmd_pause(args: argparse.Namespace) -> int:
    verb = "pause" if args.handler is cmd_pause else "resume"
    if bool(args.all) == bool(args.nodes):
        print(f"error: name the nodes to {verb}, or --all", file=sys.stderr)
        return EXIT_INVALID
    paths = [f"/v1/{verb}"] if args.all else [f"/v1/nodes/{n}/{verb}" for n in args.nodes]
    try:
        for path in paths:
            code, body = _post(args, path, {"who": "cli"})
            if code != 200:
                return _refusal(code, body)
            what = "the whole cluster" if args.all else path.split("/")[3]
            holds = body.get("holds_on") if isinstance(body, dict) else None
            print(f"{what}: {verb}d (holds on {holds})")
    except client.Unreachable as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_UNREACHABLE
    return EXIT_OK


def _follow(args: argparse.Namespace, op_id: str) -> int:
    """Print the operation's steps as they come; Ctrl-C asks it to stop after the current node."""
    ep = client.endpoint(args.url, args.socket, args.config, args.token_file)
    printed = 0
    cancelled = False
    while True:
        try:
            code, doc = asyncio.run(client.call(ep, "GET", f"/v1/operations/{op_id}", 10.0))
            if code != 200 or not isinstance(doc, dict):
                return _refusal(code, doc)
            steps = doc.get("steps") or []
            for step in steps[printed:]:
                print(f"{step.get('at')}  {step.get('text')}", flush=True)
            printed = len(steps)
            if doc.get("outcome") is not None:
                return EXIT_OK if doc.get("outcome") == "ok" else EXIT_FAILED
            time.sleep(0.5)  # the operation's pace is the cluster's; poll it
        except KeyboardInterrupt:
            if cancelled:
                print("\nleft it running; follow it with GET /v1/operations/" + op_id, file=sys.stderr)
                return 130
            cancelled = True
            print("\nstopping after the current node (Ctrl-C again to leave it running)", file=sys.stderr)
            asyncio.run(client.call(ep, "POST", f"/v1/operations/{op_id}/cancel", 10.0))


def cmd_restart(args: argparse.Namespace) -> int:
    if args.handler is cmd_restart:
        path, body = f"/v1/nodes/{args.node}/restart", {"who": "cli"}
    else:
        path, body = "/v1/rolling-restart", {"who": "cli", "role": args.role}
    try:
        code, answer = _post(args, path, body)
        if code != 202 or not isinstance(answer, dict):
            return _refusal(code, answer)
        op_id = str(answer.get("operation"))
        print(
            f"operation {op_id}" + (f": {', '.join(answer['nodes'])}" if answer.get("nodes") else ""),
            flush=True,
        )
        return EXIT_OK if args.no_wait else _follow(args, op_id)
    except client.Unreachable as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_UNREACHABLE


def cmd_resume(args: argparse.Namespace) -> int:
    return cmd_pause(args)


def cmd_rolling_restart(args: argparse.Namespace) -> int:
    return cmd_restart(args)


def cmd_upgrade_status(args: argparse.Namespace) -> int:
    return upgrade_cli.cmd_status(args, _call, client.Unreachable)


def cmd_completion(_args: argparse.Namespace) -> int:
    print(completion.bash_script(build_parser()))
    return EXIT_OK


def cmd_nodes(args: argparse.Namespace) -> int:
    """Node names of the file, read leniently (secrets need not be available): for completion."""
    try:
        document = tomllib.loads(Path(args.config).read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError):
        return EXIT_FAILED
    for section in ("meta", "ceresdb"):
        table = document.get(section)
        for node in table.get("nodes", []) if isinstance(table, dict) else []:
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                print(node["name"])
    return EXIT_OK


def _host_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        metavar="ADDR",
        help="this supervisor runs exactly the nodes whose host is ADDR (default: every node whose host "
        "is an address of this machine)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ceres-supervisor",
        description="Keeps a CeresDB/HoraeDB cluster (WithMeta mode) running on a Docker host.",
    )
    parser.add_argument("--version", action="version", version=_version())
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
    run.add_argument(
        "--listen", metavar="ADDR", help="the API's address (host:port or unix:/path) instead of the file's"
    )
    run.add_argument(
        "--advertise",
        metavar="URL",
        help="the URL other agents reach this one's API at (default: from --host and the listen port "
        "when listen is a wildcard address, else the listen address)",
    )
    run.add_argument(
        "--store",
        metavar="URL[,URL]",
        help="the etcd members this agent talks to, if not the meta nodes' client addresses "
        "(e.g. through a proxy)",
    )
    _host_arg(run)
    run.set_defaults(handler=cmd_run)

    plan = sub.add_parser("plan", help="what `run` would change now, and why, without doing it")
    plan.add_argument("-c", "--config", required=True, metavar="FILE")
    plan.add_argument("--docker-url", help=argparse.SUPPRESS)
    _host_arg(plan)
    plan.set_defaults(handler=cmd_plan)

    down = sub.add_parser("down", help="stop CeresDB nodes then meta and remove the containers; data is kept")
    down.add_argument("-c", "--config", required=True, metavar="FILE")
    down.add_argument("--docker-url", help=argparse.SUPPRESS)
    down.add_argument(
        "--force", action="store_true", help="even if a daemon answers on the file's listen address"
    )
    _host_arg(down)
    down.set_defaults(handler=cmd_down)

    status = sub.add_parser("status", help="the cluster and its nodes (exit 0 healthy, 1 not, 3 unreachable)")
    _api_args(status)
    status.add_argument("--json", action="store_true", help="print the document as the API gave it")
    status.add_argument("--local", action="store_true", help="this supervisor's nodes only (/v1/status)")
    status.set_defaults(handler=cmd_status)

    reload = sub.add_parser("reload", help="re-read the file in the running daemon (as SIGHUP)")
    _api_args(reload)
    reload.set_defaults(handler=cmd_reload)

    for verb, handler, what in (
        ("pause", cmd_pause, "never start, stop or restart"),
        ("resume", cmd_resume, "handle again"),
    ):
        control = sub.add_parser(verb, help=f"{what} these nodes (maintenance), on every machine")
        _api_args(control)
        control.add_argument("nodes", nargs="*", metavar="NODE")
        control.add_argument("--all", action="store_true", help="the whole cluster")
        control.set_defaults(handler=handler)

    restart = sub.add_parser("restart", help="planned restart of one node (flush, stop, start, wait healthy)")
    _api_args(restart)
    restart.add_argument("node", metavar="NODE")
    restart.add_argument("--no-wait", action="store_true", help="print the operation id and return")
    restart.set_defaults(handler=cmd_restart)

    rolling = sub.add_parser(
        "rolling-restart", help="meta followers, the leader, then CeresDB, one at a time"
    )
    _api_args(rolling)
    rolling.add_argument("--role", choices=("meta", "ceresdb"), help="only the nodes of this role")
    rolling.add_argument("--no-wait", action="store_true", help="print the operation id and return")
    rolling.set_defaults(handler=cmd_rolling_restart)

    backups.add_parsers(sub, _host_arg)

    upgrade = sub.add_parser(
        "upgrade",
        help="the upgrade under way (a changed version in the file): `upgrade status` says which nodes are "
        "done, the next step, a halt and how to go back (exit 0 none pending, 1 in progress or waiting, "
        "5 halted or refused)",
    )
    upgrade.add_argument("what", choices=("status",), help="status: the upgrade as the daemon sees it")
    _api_args(upgrade)
    upgrade.add_argument("--json", action="store_true", help="print the document as the API gave it")
    upgrade.set_defaults(handler=cmd_upgrade_status)

    completion_cmd = sub.add_parser("completion", help="print a shell completion script (bash)")
    completion_cmd.add_argument("shell", choices=("bash",))
    completion_cmd.set_defaults(handler=cmd_completion)

    nodes = sub.add_parser("nodes")  # for completion: the node names of a file, one a line
    nodes.add_argument("-c", "--config", default=client.DEFAULT_CONFIG, metavar="FILE")
    nodes.set_defaults(handler=cmd_nodes)
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
    except LocalityError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    except CeresError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as err:
        print(f"error: {err.strerror or err}: {err.filename or ''}", file=sys.stderr)
        return EXIT_INTERNAL
    except KeyboardInterrupt:
        return 130
