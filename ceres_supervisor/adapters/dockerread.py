"""Docker's answers in the supervisor's terms: a container inspected, a list's status, an event, a
timestamp."""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from ceres_supervisor.desired.containers import (
    LABEL_HASH,
    LABEL_HOST,
    LABEL_NODE,
    LABEL_RELEASE,
    LABEL_ROLE,
)
from ceres_supervisor.model.observed import ObservedContainer
from ceres_supervisor.model.versions import release_of_image

EVENT_ACTIONS: Final = frozenset({"start", "die", "oom", "destroy", "pause", "unpause", "kill", "stop"})


@dataclass(frozen=True)
class EngineEvent:
    action: str
    container_id: str
    node: str
    exit_code: int | None
    at_ns: int
    """Docker's timeNano of the event."""
    received_ns: int
    """time.time_ns() when the supervisor received it."""
    host: str = ""
    """The container's `io.ceres-supervisor.host` label."""


def parse_time(text: str | None) -> datetime | None:
    """Docker's RFC 3339 times carry nanoseconds; Python takes at most microseconds."""
    if not text or text.startswith("0001-"):
        return None
    main, dot, rest = text.replace("Z", "+00:00").partition(".")
    if dot:
        digits = "".join(itertools.takewhile(str.isdigit, rest))
        main = f"{main}.{digits[:6]}{rest[len(digits) :]}"
    return datetime.fromisoformat(main)


def observed_from(attrs: dict[str, Any]) -> ObservedContainer:
    """A container as `docker inspect` shows it."""
    labels = attrs.get("Config", {}).get("Labels") or {}
    state = attrs.get("State") or {}
    running = bool(state.get("Running"))
    image = attrs.get("Config", {}).get("Image", "")
    release = labels.get(LABEL_RELEASE) or ""
    if not release:  # made before containers carried the label: what the image's tag says
        told = release_of_image(image)
        release = told.label() if told is not None else ""
    return ObservedContainer(
        id=attrs["Id"],
        name=attrs.get("Name", "").lstrip("/"),
        node=labels.get(LABEL_NODE, ""),
        role=labels.get(LABEL_ROLE, ""),
        spec_hash=labels.get(LABEL_HASH, ""),
        state=str(state.get("Status", "unknown")),
        image=image,
        exit_code=None if running else state.get("ExitCode"),
        oom_killed=bool(state.get("OOMKilled")),
        started_at=parse_time(state.get("StartedAt")),
        finished_at=None if running else parse_time(state.get("FinishedAt")),
        error=str(state.get("Error") or ""),
        host=labels.get(LABEL_HOST, ""),
        release=release,
    )


def event_from(raw: dict[str, Any]) -> EngineEvent | None:
    """One of Docker's container events, or None for an action the supervisor does not follow."""
    action = str(raw.get("Action") or raw.get("status") or "").split(":")[0]
    if action not in EVENT_ACTIONS:
        return None
    attributes = (raw.get("Actor") or {}).get("Attributes") or {}
    code = attributes.get("exitCode")
    return EngineEvent(
        action=action,
        container_id=str(raw.get("id") or (raw.get("Actor") or {}).get("ID", "")),
        node=str(attributes.get(LABEL_NODE, "")),
        exit_code=int(code) if code is not None and str(code).lstrip("-").isdigit() else None,
        at_ns=int(raw.get("timeNano") or 0),
        received_ns=time.time_ns(),
        host=str(attributes.get(LABEL_HOST, "")),
    )


_AGE: Final = re.compile(
    r"Less than a second|About an? (minute|hour)|(\d+) (second|minute|hour|day|week|month|year)s?"
)
_UNIT_S: Final = {
    "second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800, "month": 2592000, "year": 31536000,
}  # fmt: skip


def status_key(state: str, status: str) -> tuple[str, int | None]:
    """(what a list summary says of a container, but its age; that age in seconds, None when the
    text has none). Docker writes the age into `Status` ("Up 3 seconds", "Exited (0) 2 minutes
    ago", in go-units' HumanDuration words), which changes every second for a young container: the
    key leaves it out, and a container is inspected again when the key changed or its age went
    down (it started or stopped again since the last list, whatever the events said)."""
    match = _AGE.search(status)
    if match is None:
        return f"{state}|{status}", None
    if match.group(2) is not None:
        age = int(match.group(2)) * _UNIT_S[match.group(3)]
    else:
        age = {None: 0, "minute": 60, "hour": 3600}[match.group(1)]
    return f"{state}|{status[: match.start()]}{status[match.end() :]}", age
