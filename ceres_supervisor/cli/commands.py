"""`ceres-supervisor`: one grammar for every subcommand, and the exit codes of `exits`.

Every command takes `-c/--config FILE` (default /etc/ceres-supervisor/cluster.toml; a missing file
is an error that says so); the commands that talk to a daemon also take `--url`, `--socket` and
`--token-file`; every command that prints a report takes `--json`. Every option has a
description; each command's help ends with examples and its exit codes. A usage mistake exits 64
with one line; every other error is one plain line on stderr (an invalid file: its problems, one
a line, each with its key path), never a traceback, never a secret.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ceres_supervisor.adapters import logs
from ceres_supervisor.cli import backups, client, completion, exits, local, remote
from ceres_supervisor.cli import upgrades as upgrade_cli
from ceres_supervisor.cli.exits import Failure
from ceres_supervisor.cli.grammar import (
    PROG,
    Parser,
    api_options,
    command,
    config_option,
    docker_option,
    host_option,
    json_option,
)
from ceres_supervisor.desired.locality import LocalityError
from ceres_supervisor.model.errors import CeresError, DesiredStateError


def build_parser() -> Parser:
    parser = Parser(
        prog=PROG,
        description="Keeps a CeresDB/HoraeDB cluster (WithMeta mode) running on Docker hosts, as one "
        "desired-state file declares.",
        epilog="exit codes (every command):\n"
        + exits.describe(tuple(code for code, _ in exits.TABLE))
        + f"\n\n`{PROG} COMMAND --help` shows a command's options, examples and exit codes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=local.version_line(), help="print the version and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    ok, bad, invalid, no_file = exits.OK, exits.NOT_OK, exits.INVALID, exits.NO_FILE
    gone, refused, unknown, conflict = exits.UNREACHABLE, exits.REFUSED, exits.UNKNOWN_NODE, exits.CONFLICT

    p = command(
        sub,
        "validate",
        "check a desired-state file",
        local.validate,
        [
            "ceres-supervisor validate -c /etc/ceres-supervisor/cluster.toml",
            "ceres-supervisor validate --json | jq .problems",
        ],
        (ok, invalid, no_file),
    )
    config_option(p, "the file to check")
    json_option(p, "the verdict, its problems and warnings")

    p = command(
        sub,
        "render",
        "write every node's config and environment to DIR/<node>/",
        local.render,
        ["ceres-supervisor render -c cluster.toml -o /tmp/rendered"],
        (ok, invalid, no_file),
    )
    config_option(p, "the file to render")
    p.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="where to write DIR/<node>/*.toml and env"
    )
    json_option(p, "the files written")

    p = command(
        sub,
        "run",
        "the daemon, in the foreground (what systemd runs)",
        local.run,
        [
            "ceres-supervisor run -c /etc/ceres-supervisor/cluster.toml",
            "ceres-supervisor run -c cluster.toml --host 127.0.0.2 --listen 127.0.0.2:5480",
        ],
        (ok, bad, invalid, no_file, exits.INTERRUPTED),
    )
    config_option(p, "the cluster to run")
    p.add_argument(
        "--log-level", choices=sorted(logs.LEVELS), help="instead of the file's supervisor.log_level"
    )
    p.add_argument(
        "--listen", metavar="ADDR", help="the API's address (host:port or unix:/path) instead of the file's"
    )
    p.add_argument(
        "--advertise",
        metavar="URL",
        help="the URL other agents reach this one's API at (default: from --host and the listen port "
        "when listen is a wildcard address, else the listen address)",
    )
    p.add_argument(
        "--store",
        metavar="URL[,URL]",
        help="the etcd members this agent talks to, if not the meta nodes' client addresses "
        "(e.g. through a proxy)",
    )
    host_option(p)
    docker_option(p)
    p.add_argument(
        "--json", action="store_true", help="log JSON lines even on a terminal (the default elsewhere)"
    )

    p = command(
        sub,
        "plan",
        "what run (or a reload) would change now, and why, without doing it",
        local.plan,
        [
            "ceres-supervisor plan",
            "ceres-supervisor plan -c new.toml --json | jq '.nodes[] | select(.action)'",
        ],
        (ok, invalid, no_file, gone),
    )
    config_option(p, "the cluster to plan")
    host_option(p)
    docker_option(p)
    json_option(p, "the plan")

    p = command(
        sub,
        "down",
        "stop this machine's CeresDB nodes, then meta, and remove the containers (data kept)",
        local.down,
        ["ceres-supervisor down -c cluster.toml", "ceres-supervisor down --force"],
        (ok, bad, invalid, no_file, gone, conflict),
    )
    config_option(p, "the cluster to take down")
    p.add_argument(
        "--force", action="store_true", help="even while a daemon answers on the file's listen address"
    )
    host_option(p)
    docker_option(p)
    json_option(p, "what was removed")

    p = command(
        sub,
        "status",
        "the whole cluster: every node on every machine, the agents, slots, pauses",
        remote.status,
        [
            "ceres-supervisor status",
            "ceres-supervisor status -o wide",
            "ceres-supervisor status --watch --interval 5",
            "ceres-supervisor status --url http://10.0.0.2:5480",
            "ceres-supervisor status --json | jq '.nodes[] | select(.state != \"healthy\")'",
        ],
        (ok, bad, invalid, no_file, gone, refused, exits.INTERRUPTED),
    )
    api_options(p)
    json_option(p, "the /v1/cluster document (with --local: /v1/status)")
    p.add_argument(
        "--local", action="store_true", help="this machine's nodes only, as its supervisor sees them"
    )
    p.add_argument(
        "-o",
        "--output",
        choices=("table", "wide"),
        default="table",
        help="wide: also the agent, last exit and container of each node, and whole reasons",
    )
    p.add_argument("-w", "--watch", action="store_true", help="show it again every --interval until Ctrl-C")
    p.add_argument(
        "--interval", type=float, default=2.0, metavar="SECONDS", help="--watch's pace (default 2)"
    )

    p = command(
        sub,
        "reload",
        "re-read the file in the running daemon (as systemctl reload)",
        remote.reload,
        ["ceres-supervisor reload", "ceres-supervisor reload --json"],
        (ok, invalid, no_file, gone, refused, exits.RUNNING),
    )
    api_options(p)
    json_option(p, "the outcome")
    p.add_argument(
        "--wait",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long to follow a reload still running after the daemon's 60 s (default 600)",
    )

    for verb, what in (("pause", "never start, stop or restart"), ("resume", "handle again")):
        p = command(
            sub,
            verb,
            f"{what} these nodes (maintenance), on every machine; all of them or none",
            remote.pause,
            [f"ceres-supervisor {verb} db0 db1", f"ceres-supervisor {verb} --all"],
            (ok, no_file, gone, refused, unknown),
        )
        api_options(p)
        p.add_argument(
            "nodes", nargs="*", metavar="NODE", help="the nodes (all must be known, or none changes)"
        )
        p.add_argument("--all", action="store_true", help="the whole cluster")
        json_option(p, "the daemon's answer")

    p = command(
        sub,
        "restart",
        "planned restart of one node: slot, flush, stop, start, wait healthy",
        remote.restart,
        ["ceres-supervisor restart db1", "ceres-supervisor restart db1 --no-wait --json"],
        (ok, bad, no_file, gone, refused, unknown, conflict, exits.INTERRUPTED),
    )
    api_options(p)
    p.add_argument("node", metavar="NODE", help="the node to restart (on any machine)")
    p.add_argument("--no-wait", action="store_true", help="print the operation's id and return")
    json_option(p, "the operation (its id with --no-wait; its steps and outcome at the end)")

    p = command(
        sub,
        "rolling-restart",
        "meta followers, the leader, then CeresDB, one at a time cluster-wide",
        remote.restart,
        ["ceres-supervisor rolling-restart", "ceres-supervisor rolling-restart --role ceresdb"],
        (ok, bad, no_file, gone, refused, conflict, exits.INTERRUPTED),
    )
    api_options(p)
    p.add_argument("--role", choices=("meta", "ceresdb"), help="only the nodes of this role")
    p.add_argument("--no-wait", action="store_true", help="print the operation's id and return")
    json_option(p, "the operation (its id with --no-wait; its steps and outcome at the end)")

    p = command(
        sub,
        "events",
        "what happened, on every machine, in time order",
        remote.events,
        [
            "ceres-supervisor events",
            "ceres-supervisor events --node db1 --since 2h",
            "ceres-supervisor events -f",
            "ceres-supervisor events --json | jq -c 'select(.type == \"died\")'",
        ],
        (ok, no_file, gone, refused, unknown),
    )
    api_options(p)
    p.add_argument("--node", metavar="NODE", help="only the events about this node")
    p.add_argument(
        "--since", metavar="T", help="only since T: a duration ago (10m, 2h, 1d) or an RFC 3339 time"
    )
    p.add_argument("-n", "--limit", type=int, default=50, metavar="N", help="the last N events (default 50)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events until Ctrl-C")
    json_option(p, "one event a line")

    p = command(
        sub,
        "logs",
        "a node's container log, from the machine that runs it",
        remote.logs,
        [
            "ceres-supervisor logs db1",
            "ceres-supervisor logs db1 -n 500 --since 10m",
            "ceres-supervisor logs db1 -f",
        ],
        (ok, no_file, gone, refused, unknown),
    )
    api_options(p)
    p.add_argument("node", metavar="NODE", help="the node (on any machine)")
    p.add_argument("-n", "--lines", type=int, default=100, metavar="N", help="the last N lines (default 100)")
    p.add_argument("--since", metavar="T", help="only since T: a duration ago (10m, 2h) or an RFC 3339 time")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until Ctrl-C")
    json_option(p, "one line a line, with its time")

    p = command(
        sub,
        "describe",
        "everything about one node: state history, last exits, container, config, "
        "lease, slot, pause, last log lines",
        remote.describe,
        ["ceres-supervisor describe db1", "ceres-supervisor describe db1 --json | jq .history"],
        (ok, no_file, gone, refused, unknown),
    )
    api_options(p)
    p.add_argument("node", metavar="NODE", help="the node (on any machine)")
    json_option(p, "the description")

    p = command(
        sub,
        "backup",
        "snapshot CeresMeta's etcd (the whole keyspace) with its SHA-256 and a manifest",
        backups.backup,
        [
            "ceres-supervisor backup",
            "ceres-supervisor backup -o /srv/backups/",
            "ceres-supervisor backup --json | jq .manifest.sha256",
        ],
        (ok, bad, invalid, no_file),
    )
    config_option(p, "the cluster whose meta to back up")
    p.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="the snapshot file, or a directory (a trailing /) for <cluster>-<time>.db "
        "(default: backup.dir, else here)",
    )
    json_option(p, "the snapshot's path and its manifest")

    p = command(
        sub,
        "restore",
        "put a backup back into this machine's meta members (the cluster stopped)",
        backups.restore,
        [
            "ceres-supervisor restore --from /srv/backups/prod-20261207T143012.345Z.db",
            "ceres-supervisor restore --from prod.db --host 10.0.0.2 --json",
        ],
        (ok, bad, invalid, no_file, gone, conflict, exits.BACKUP_REFUSED),
    )
    config_option(p, "the cluster to restore")
    p.add_argument(
        "--from", dest="source", required=True, metavar="PATH", help="the snapshot (or its manifest)"
    )
    host_option(p)
    docker_option(p)
    json_option(p, "what was restored, and what to do next")

    p = command(
        sub,
        "upgrade",
        "the upgrade under way (the file names another version than the containers run): which nodes "
        "are done, the next step, a halt and how to go back",
        upgrade_cli.status,
        ["ceres-supervisor upgrade status", "ceres-supervisor upgrade status --json | jq .upgrade.steps"],
        (ok, bad, no_file, gone, refused, exits.RUNNING),
    )
    p.add_argument("what", choices=("status",), help="status: the upgrade as the daemon sees it")
    api_options(p)
    json_option(p, "the document the API gave")

    p = command(
        sub,
        "version",
        "the version, with the Python and Docker SDK it runs with",
        local.version,
        ["ceres-supervisor version --json"],
        (ok,),
    )
    json_option(p, "the versions")

    p = command(
        sub,
        "completion",
        "print a bash completion script (or, for it, the nodes of a file)",
        _completion,
        [
            "source <(ceres-supervisor completion bash)",
            "ceres-supervisor completion bash > /usr/share/bash-completion/completions/ceres-supervisor",
        ],
        (ok,),
    )
    p.add_argument(
        "shell",
        choices=("bash", "nodes"),
        help="bash: the script; nodes: the node names of the file, one a line (what the script asks)",
    )
    config_option(p, "where `nodes` reads the names (read leniently)")
    return parser


def _completion(args: argparse.Namespace) -> int:
    if args.shell == "nodes":
        names = local.node_names(args.config or client.DEFAULT_CONFIG)
        if names:
            print("\n".join(names))
        return exits.OK
    print(completion.bash_script(build_parser()))
    return exits.OK


def main(argv: Sequence[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
        code: int = args.handler(args)
        return code
    except SystemExit as exit_:  # --help, --version
        return int(exit_.code or 0)
    except Failure as err:
        print(f"error: {err.message}", file=sys.stderr)
        return err.code
    except DesiredStateError as err:
        print(err.render(), file=sys.stderr)
        return exits.INVALID
    except LocalityError as err:
        print(f"error: {exits.one_line(err)}", file=sys.stderr)
        return exits.INVALID
    except CeresError as err:
        print(f"error: {exits.one_line(err)}", file=sys.stderr)
        return exits.INVALID
    except KeyboardInterrupt:
        return exits.INTERRUPTED
    except BrokenPipeError:  # `| head`: the reader is gone, nothing more to say
        return exits.OK
    except OSError as err:
        print(
            f"error: {exits.one_line(err.strerror or err)}: {err.filename or ''}".rstrip(": "),
            file=sys.stderr,
        )
        return exits.INTERNAL
