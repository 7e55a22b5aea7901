#!/usr/bin/python3
"""Test hooks of both stand-ins, reachable only with `docker exec` (see ../README.md):

ceres-emulator-fault freeze-lease          CeresDB: stop the shard-lock keepalives, fail OpenShard (HTTP answers)
ceres-emulator-fault freeze-http           accept HTTP connections, read the request, never answer (every route)
ceres-emulator-fault exit CODE             exit with CODE (now, and at once on every later start)
ceres-emulator-fault ignore-sigterm        CeresDB: a stop hangs until Docker's SIGKILL (cleared at the next start)
ceres-emulator-fault open-slow SHARD S     CeresDB: opening SHARD's tables takes S seconds (`hold`: until cleared)
ceres-emulator-fault open-fail SHARD       CeresDB: opening SHARD's tables fails (the shard stays partly open)
ceres-emulator-fault wal-replay S          CeresDB: opening any shard's tables replays S seconds of WAL
ceres-emulator-fault open-clear            CeresDB: tables open at once again
ceres-emulator-fault start-slow S          CeresDB: opening the RocksDB WAL at start takes S seconds (0: at once)
ceres-emulator-fault flush-slow S          CeresDB: POST /debug/flush_memtable takes S seconds (0: at once)
ceres-emulator-fault retry-scale F         CeresDB: every retry sleep times F (OpenShard's 5 s -> 5F s); `default`: 1
ceres-emulator-fault http500 ROUTE S       meta: this member answers ROUTE (getNodeShards | clusters) 500 for S seconds
ceres-emulator-fault clear                 back to normal (tick and retry-scale stay)
ceres-emulator-fault tick SECONDS          meta: scheduler interval (real: 5 s); `tick default` restores 5 s
"""

import json
import sys
import time
from pathlib import Path

RUN_DIR = Path("/run/ceres-emulator")
USAGE = (
    "usage: ceres-emulator-fault freeze-lease | freeze-http | ignore-sigterm | exit CODE | "
    "open-slow SHARD SECONDS|hold | open-fail SHARD | wal-replay SECONDS | open-clear | start-slow SECONDS | "
    "flush-slow SECONDS | retry-scale FACTOR|default | http500 getNodeShards|clusters SECONDS | http500 clear | "
    "clear | tick SECONDS|default"
)
CLEARED_BY_CLEAR = ("fault", "open", "flush", "start-slow", "http500")


def _number(text: str, low: float = 0.0, high: float = 3600.0) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if low <= value <= high else None


def _write(name: str, text: str) -> None:
    (RUN_DIR / name).write_text(text + "\n")


def _update_json(name: str, key: str, value: object | None) -> None:
    try:
        current = json.loads((RUN_DIR / name).read_text() or "{}")
    except (OSError, ValueError):
        current = {}
    if value is None:
        current.pop(key, None)
    else:
        current[key] = value
    _write(name, json.dumps(current))


def _shard(text: str) -> bool:
    return text == "*" or text.isdigit()


def main(argv: list[str]) -> int:
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    command, args = argv[0], argv[1:]
    if command in ("freeze-lease", "freeze-http", "ignore-sigterm") and not args:
        _write("fault", command)
    elif command == "exit" and len(args) == 1 and args[0].isdigit():
        _write("fault", f"exit {args[0]}")
    elif command == "clear" and not args:
        for name in CLEARED_BY_CLEAR:
            (RUN_DIR / name).unlink(missing_ok=True)
        _write("fault", "")
    elif (
        command == "tick" and len(args) == 1 and (args[0] == "default" or _number(args[0], 0.05) is not None)
    ):
        if args[0] == "default":
            (RUN_DIR / "tick").unlink(missing_ok=True)
        else:
            _write("tick", args[0])
    elif (
        command == "open-slow"
        and len(args) == 2
        and _shard(args[0])
        and (args[1] == "hold" or _number(args[1]) is not None)
    ):
        _update_json("open", args[0], {"slow": -1 if args[1] == "hold" else float(args[1])})
    elif command == "open-fail" and len(args) == 1 and _shard(args[0]):
        _update_json("open", args[0], {"fail": True})
    elif command == "wal-replay" and len(args) == 1 and _number(args[0]) is not None:
        _update_json("open", "*", {"slow": float(args[0])})
    elif command == "open-clear" and not args:
        (RUN_DIR / "open").unlink(missing_ok=True)
    elif command in ("start-slow", "flush-slow") and len(args) == 1 and _number(args[0]) is not None:
        _write("start-slow" if command == "start-slow" else "flush", args[0])
    elif (
        command == "retry-scale"
        and len(args) == 1
        and (args[0] == "default" or _number(args[0], 0.001, 100) is not None)
    ):
        if args[0] == "default":
            (RUN_DIR / "retry-scale").unlink(missing_ok=True)
        else:
            _write("retry-scale", args[0])
    elif command == "http500" and args == ["clear"]:
        (RUN_DIR / "http500").unlink(missing_ok=True)
    elif (
        command == "http500"
        and len(args) == 2
        and args[0] in ("getNodeShards", "clusters")
        and _number(args[1]) is not None
    ):
        _update_json("http500", args[0], time.time() + float(args[1]))
    else:
        print(USAGE, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
