"""The exit codes of `ceres-supervisor`: one meaning each, the same for every command, so a script
can tell a usage mistake from an invalid file, an unknown node, a daemon that does not answer,
a refused token, a conflict and a bug. And the one-line failure that carries a code.
"""

from __future__ import annotations

import re
from typing import Final

OK: Final = 0
NOT_OK: Final = 1
INVALID: Final = 2
UNREACHABLE: Final = 3
REFUSED: Final = 4
UNKNOWN_NODE: Final = 5
CONFLICT: Final = 6
BACKUP_REFUSED: Final = 7
USAGE: Final = 64
NO_FILE: Final = 66
INTERNAL: Final = 70
RUNNING: Final = 75
INTERRUPTED: Final = 130

TABLE: Final = (
    (OK, "done; for status: the cluster is healthy"),
    (NOT_OK, "not done or not healthy: status degraded, starting or unknown; an operation that failed"),
    (INVALID, "the desired-state file is invalid (also when the daemon refuses a reload for it)"),
    (UNREACHABLE, "nothing answers: the daemon's API, the agent that runs the node, or the Docker Engine"),
    (REFUSED, "the daemon refused the token (HTTP 401/403)"),
    (UNKNOWN_NODE, "no node of that name in the file (nothing was changed)"),
    (CONFLICT, "not now: being restarted, not running, paused; a daemon or containers run (down, restore)"),
    (BACKUP_REFUSED, "the backup is refused: corrupt, incomplete, or of another cluster or meta membership"),
    (USAGE, "the command line is wrong: an unknown command or option, a missing or bad value"),
    (NO_FILE, "the desired-state file does not exist or cannot be read"),
    (INTERNAL, "internal error: the daemon answered 500, or a bug in the command"),
    (
        RUNNING,
        "still running when the command stopped waiting (a long reload), or an upgrade under way: not failed",
    ),
    (INTERRUPTED, "interrupted (Ctrl-C, or a second SIGTERM/SIGINT for run)"),
)
"""Every exit code and what it means: `--help` and README print this table."""

_SPACE: Final = re.compile(r"\s+")
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def one_line(text: object) -> str:
    """Text fit for one line of a terminal: whitespace runs (newlines included) become one space,
    control characters are dropped (a hostile name must not move the cursor)."""
    return _SPACE.sub(" ", _CONTROL.sub("", str(text))).strip()


class Failure(Exception):
    """Why a command stops, in plain words, and its exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = one_line(message)


def describe(codes: tuple[int, ...]) -> str:
    """The lines of an `exit codes:` section of a command's help, for these codes."""
    meaning = dict(TABLE)
    return "\n".join(f"  {code:<3} {meaning[code]}" for code in sorted(set(codes)))
