#!/usr/bin/python3
"""Test hooks of both stand-ins, reachable only with `docker exec`:

    ceres-emulator-fault freeze-lease   CeresDB: stop the shard-lock keepalives, fail OpenShard (HTTP answers)
    ceres-emulator-fault freeze-http    accept HTTP connections, read the request, never answer (every route)
    ceres-emulator-fault exit CODE      exit with CODE (now, and at once on every later start)
    ceres-emulator-fault ignore-sigterm CeresDB: a stop hangs until Docker's SIGKILL (cleared at the next start)
    ceres-emulator-fault clear          back to normal (the tick stays)
    ceres-emulator-fault tick SECONDS   meta: scheduler interval (real: 5 s); `tick default` restores 5 s
"""

import sys
from pathlib import Path

RUN_DIR = Path("/run/ceres-emulator")
FAULT_FILE = RUN_DIR / "fault"
TICK_FILE = RUN_DIR / "tick"
USAGE = ("usage: ceres-emulator-fault freeze-lease | freeze-http | ignore-sigterm | exit CODE | clear | "
         "tick SECONDS|default")


def _seconds(text: str) -> bool:
    try:
        return 0.05 <= float(text) <= 3600
    except ValueError:
        return False


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("freeze-lease", "freeze-http", "ignore-sigterm", "exit", "clear", "tick"):
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] == "exit" and (len(argv) != 2 or not argv[1].isdigit()):
        print(USAGE, file=sys.stderr)
        return 2
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    if argv[0] == "tick":
        if len(argv) != 2 or not (argv[1] == "default" or _seconds(argv[1])):
            print(USAGE, file=sys.stderr)
            return 2
        if argv[1] == "default":
            TICK_FILE.unlink(missing_ok=True)
        else:
            TICK_FILE.write_text(argv[1] + "\n")
        return 0
    FAULT_FILE.write_text("" if argv[0] == "clear" else " ".join(argv) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
