"""`ceres-supervisor` entry point: argv -> the subcommand -> exit code. Nothing else."""

from __future__ import annotations

import sys

from . import cli


def main() -> None:
    sys.exit(cli.main(sys.argv[1:]))


if __name__ == "__main__":
    main()
