"""The grammar's parts shared by every subcommand: the parser (a usage mistake is exit 64, one
line naming the visible commands), each command's help with its examples and exit codes, and the
options that mean the same everywhere (`-c`, the API's `--url`/`--socket`/`--token-file`, `--json`,
`--host`, `--docker-url`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import NoReturn

from ceres_supervisor.cli import client, exits
from ceres_supervisor.cli.exits import Failure

PROG = "ceres-supervisor"


class Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake as exit 64 and one line that names only visible commands."""

    def error(self, message: str) -> NoReturn:
        if "invalid choice" in message and "argument COMMAND" in message:
            wrong = message.split("invalid choice: ", 1)[1].split(" (choose", 1)[0]
            message = f"unknown command {wrong}; the commands: {', '.join(visible_commands(self))}"
        raise Failure(exits.USAGE, f"{message} (see {self.prog} --help)")


def visible_commands(parser: argparse.ArgumentParser) -> list[str]:
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    return [a.dest for a in sub._choices_actions] if sub is not None else []


def epilog(examples: Sequence[str], codes: Sequence[int]) -> str:
    lines = ["examples:", *(f"  {e}" for e in examples), "", "exit codes:", exits.describe(tuple(codes))]
    return "\n".join(lines)


def config_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help=f"the desired-state file: {what} (default {client.DEFAULT_CONFIG}; a missing file is an error)",
    )


def api_options(parser: argparse.ArgumentParser) -> None:
    config_option(parser, "its supervisor.listen says where the daemon's API is, its token_file the token")
    parser.add_argument(
        "--url",
        metavar="URL",
        help="the API's base URL instead of the file's listen, e.g. http://10.0.0.2:5480",
    )
    parser.add_argument("--socket", metavar="PATH", help="the API's unix socket instead of the file's listen")
    parser.add_argument(
        "--token-file", metavar="FILE", help="the bearer token (default: the file's supervisor.token_file)"
    )


def json_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON (schema in README)")


def host_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        metavar="ADDR",
        help="this machine's nodes are those whose host is ADDR (default: every node whose host is an "
        "address of this machine)",
    )


def docker_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--docker-url",
        metavar="URL",
        help="the Docker Engine's address (default: DOCKER_HOST, else the local socket)",
    )


def command(
    sub: argparse._SubParsersAction[Parser],
    name: str,
    summary: str,
    handler: Callable[[argparse.Namespace], int],
    examples: Sequence[str],
    codes: Sequence[int],
) -> Parser:
    parser = sub.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=epilog(examples, (*codes, exits.USAGE, exits.INTERNAL)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler)
    return parser
