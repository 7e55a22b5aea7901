"""`ceres-supervisor` entry point: argv -> the subcommand -> exit code. Nothing else."""

from __future__ import annotations

import sys

from ceres_supervisor.cli import commands


def main() -> None:
    sys.exit(commands.main(sys.argv[1:]))


if __name__ == "__main__":
    main()
