"""Whose data a directory holds: the identity marker every data directory of the supervisor carries.

`<state_dir>/data/<node>/.ceres-supervisor-identity.json` names the cluster, the node and the
flavor it was made for, and when. A node is never started on a directory whose marker names
another cluster or another node (two directories swapped, a directory copied from another
cluster): `judge` says why, naming both, the observer reads it every cycle (`problems`) so the
planner shows the node `blocked`, and `ensure`, called right before every start, refuses it as a
last guard. A directory from before markers existed is adopted once: marked for the node it is
mounted for. The flavor is recorded, not compared: an upgrade from 1.x to 2.0.0 keeps its data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

from ceres_supervisor.desired import files
from ceres_supervisor.model.errors import CeresError

MARKER_NAME: Final = ".ceres-supervisor-identity.json"
MAX_MARKER_BYTES: Final = 64 * 1024
WAY_OUT: Final = "see README, Identity of data directories"


class IdentityError(CeresError):
    """A node's data directory belongs to another node or cluster (or its marker is unreadable)."""


@dataclass(frozen=True)
class Owner:
    """The cluster a supervisor runs: what its markers name besides the node."""

    cluster: str
    flavor: str


@dataclass(frozen=True)
class Marker:
    cluster: str
    node: str
    flavor: str
    created_at: str
    adopted: bool = False
    """Marked for the node it was mounted for, having been there before markers existed."""
    restored_from: str | None = None
    """The snapshot a restored meta member's directory was made from."""

    def encode(self) -> bytes:
        return (json.dumps(asdict(self), indent=2) + "\n").encode()

    @classmethod
    def decode(cls, raw: bytes) -> Marker:
        """Raises ValueError naming what is wrong."""
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        names = ("cluster", "node", "flavor", "created_at")
        wrong = [k for k in names if not isinstance(doc.get(k), str)]
        if wrong:
            raise ValueError(f"missing or mistyped: {', '.join(wrong)}")
        restored = doc.get("restored_from")
        return cls(
            doc["cluster"],
            doc["node"],
            doc["flavor"],
            doc["created_at"],
            adopted=doc.get("adopted") is True,
            restored_from=restored if isinstance(restored, str) else None,
        )


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def new_marker(owner: Owner, node: str, adopted: bool = False, restored_from: str | None = None) -> Marker:
    return Marker(owner.cluster, node, owner.flavor, now_text(), adopted, restored_from)


def judge(found: Marker, owner: Owner, node: str, directory: Path) -> str | None:
    """Why `node` of `owner` must not start on `directory`, marked `found` (None: it may). Pure."""
    if found.cluster == owner.cluster and found.node == node:
        return None
    return (
        f"data directory {directory} is marked for node {found.node} of cluster {found.cluster} "
        f"(since {found.created_at}), not for this node, {node} of cluster {owner.cluster}: "
        f"not started ({WAY_OUT})"
    )


def unreadable(directory: Path, why: str) -> str:
    return f"data directory {directory} has an unreadable identity marker ({why}): not started ({WAY_OUT})"


def read(directory: Path) -> Marker | None:
    """The directory's marker; None when it has none. Raises IdentityError when it cannot be read."""
    try:
        with (directory / MARKER_NAME).open("rb") as handle:
            raw = handle.read(MAX_MARKER_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise IdentityError(unreadable(directory, err.strerror or str(err))) from None
    try:
        if len(raw) > MAX_MARKER_BYTES:
            raise ValueError("too large")
        return Marker.decode(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise IdentityError(unreadable(directory, str(err))) from None


def problems(nodes: Iterable[tuple[str, Path]], owner: Owner) -> dict[str, str]:
    """node -> why it must not start on its directory, for the (name, data directory) pairs given.
    A directory that does not exist yet, or has no marker, is no problem (it is made, or adopted, at
    the start). A few small reads: cheap enough for every cycle."""
    found = {}
    for node, directory in nodes:
        try:
            marker = read(directory)
        except IdentityError as err:
            found[node] = str(err)
            continue
        if marker is not None and (why := judge(marker, owner, node, directory)) is not None:
            found[node] = why
    return found


def write(directory: Path, marker: Marker) -> None:
    files.write_atomic(directory / MARKER_NAME, marker.encode(), files.PLAIN_MODE)


def ensure(directory: Path, owner: Owner, node: str) -> Literal["kept", "created", "adopted"]:
    """Right before `node` starts on `directory`: make it (marked) if missing, adopt and mark it
    if it predates markers, keep it if marked for this node. Raises IdentityError otherwise."""
    existed = False
    if directory.is_dir():
        with os.scandir(directory) as entries:
            existed = any(True for _ in entries)
    directory.mkdir(parents=True, exist_ok=True)
    marker = read(directory)
    if marker is not None:
        why = judge(marker, owner, node, directory)
        if why is not None:
            raise IdentityError(why)
        return "kept"
    write(directory, new_marker(owner, node, adopted=existed))
    return "adopted" if existed else "created"
