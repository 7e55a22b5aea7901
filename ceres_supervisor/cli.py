"""The `ceres-supervisor` subcommands and their exit codes.

Exit codes (SPEC section 5): 0 success; 2 invalid desired state or usage; other codes per
command. Input errors print one line per problem, never a traceback and never a secret value.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from . import __version__, files, loading, rendering, secrets
from .errors import CeresError, DesiredStateError

EXIT_OK: Final = 0
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
