#!/usr/bin/python3
"""Fault hooks of the CeresDB stand-in, reachable only with `docker exec`:

    ceres-emulator-fault freeze-lease   stop the shard-lock keepalives (HTTP keeps answering)
    ceres-emulator-fault freeze-http    accept HTTP connections but never answer
    ceres-emulator-fault exit CODE      exit with CODE
    ceres-emulator-fault clear          back to normal
"""

import sys
from pathlib import Path

FAULT_FILE = Path("/run/ceres-emulator/fault")
USAGE = "usage: ceres-emulator-fault freeze-lease | freeze-http | exit CODE | clear"


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("freeze-lease", "freeze-http", "exit", "clear"):
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] == "exit" and (len(argv) != 2 or not argv[1].isdigit()):
        print(USAGE, file=sys.stderr)
        return 2
    FAULT_FILE.parent.mkdir(parents=True, exist_ok=True)
    FAULT_FILE.write_text("" if argv[0] == "clear" else " ".join(argv) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
