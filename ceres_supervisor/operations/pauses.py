"""Operator pauses, kept where they survive everything but an operator's resume.

A paused node is never started, stopped or restarted by any supervisor. A pause lives in two
places: `<state_dir>/paused.json` on each machine (it holds across supervisor restarts and while
CeresMeta's etcd is down) and pause records in the store, `/ceres-supervisor/<cluster>/paused` and
`paused/<node>` (they hold on every machine). Rules, so that nothing is lost and nothing is
silently undone:

- a pause or resume asked here is applied to the file at once and queued until the store has
  taken it; it is removed from the queue by its own sequence number, so a change asked while an
  earlier one was being written is never dropped;
- the store's records are mirrored into the file only while nothing is queued and only from a
  fresh view that has caught up with this agent's own last pause write (the caller checks both: a
  view that has not brought back a pause just asked here still shows the resume before it); a
  node the store has no record of keeps the file's state, so a
  store that comes back empty (a re-initialised meta) erases nothing, and the file's pauses are
  written back to it;
- `resume --all` clears the cluster-wide pause and every node's pause, in both places;
- a `paused.json` that cannot be read is an error (the daemon refuses to start, naming the file),
  never an empty set: that would restart every node the operator stopped for maintenance.

`PauseBook` is not thread-safe by itself: its one owner (the daemon's store synchronisation)
serialises every change under one lock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ceres_supervisor.desired import files
from ceres_supervisor.model.errors import CeresError

PAUSED_FILE: Final = "paused.json"


def file_name(host: str | None) -> str:
    """`paused.json`; `paused-<ADDR>.json` for an agent run with `--host ADDR`: several agents
    sharing one machine and one state_dir each keep their own book (each writes it whole)."""
    return PAUSED_FILE if host is None else f"paused-{host}.json"


class PauseFileError(CeresError):
    """`paused.json` exists but cannot be read as the pauses it must hold."""


@dataclass(frozen=True)
class Pauses:
    all: bool = False
    nodes: frozenset[str] = frozenset()

    def change(self, nodes: frozenset[str], pause: bool, everything: bool) -> Pauses:
        if everything:
            return Pauses(pause, self.nodes if pause else frozenset())
        return Pauses(self.all, self.nodes | nodes if pause else self.nodes - nodes)

    def merged(self, records: Mapping[str, bool], all_record: bool | None) -> Pauses:
        """These pauses with the store's records laid over them (a node without one keeps its state)."""
        nodes = {n for n in self.nodes if records.get(n, True)} | {n for n, p in records.items() if p}
        return Pauses(self.all if all_record is None else all_record, frozenset(nodes))


@dataclass(frozen=True)
class Change:
    """An operator's pause or resume that the store has not taken yet."""

    seq: int
    nodes: frozenset[str]
    pause: bool
    everything: bool


@dataclass
class PauseBook:
    """The pauses as this agent holds them, and the changes the store has not taken yet."""

    path: Path
    current: Pauses = field(default_factory=Pauses)
    pending: list[Change] = field(default_factory=list)

    @classmethod
    def open(cls, state_dir: str, host: str | None = None) -> PauseBook:
        """Raises PauseFileError when the file exists but is not a pause book."""
        book = cls(Path(state_dir) / file_name(host))
        try:
            text = book.path.read_text()
        except FileNotFoundError:
            return book
        except OSError as err:
            raise PauseFileError(f"{book.path}: cannot be read: {err.strerror or err}") from None
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or not isinstance(doc.get("all", False), bool):
                raise ValueError("not an object with a boolean 'all'")
            nodes = doc.get("nodes") or []
            if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
                raise ValueError("'nodes' is not a list of names")
            book.current = Pauses(doc.get("all", False), frozenset(nodes))
            book.pending = [_change(i, raw) for i, raw in enumerate(doc.get("pending") or [], 1)]
        except (ValueError, TypeError) as err:
            raise PauseFileError(
                f"{book.path}: not a pause book ({err}); fix or remove it, knowing that removing it "
                "resumes the nodes paused on this machine"
            ) from None
        return book

    def _save(self) -> None:
        doc = {
            "all": self.current.all,
            "nodes": sorted(self.current.nodes),
            "pending": [[sorted(c.nodes), c.pause, c.everything] for c in self.pending],
        }
        files.write_atomic(self.path, json.dumps(doc, indent=1).encode(), files.PLAIN_MODE)

    def apply(self, nodes: frozenset[str], pause: bool, everything: bool) -> Change:
        """An operator's pause or resume: in force here at once, queued for the store."""
        before = self.current
        self.current = self.current.change(nodes, pause, everything)
        seq = (self.pending[-1].seq if self.pending else 0) + 1
        # A resume of everything names every node that was paused, so the store clears them too.
        named = before.nodes if everything and not pause else nodes
        change = Change(seq, named, pause, everything)
        self.pending.append(change)
        self._save()
        return change

    def pushed(self, upto: int) -> None:
        """The store has taken every change up to `upto` (later ones stay queued)."""
        self.pending = [c for c in self.pending if c.seq > upto]
        self._save()

    def mirror(self, records: Mapping[str, bool], all_record: bool | None) -> bool:
        """The store's records laid over the file (only once nothing is waiting to be pushed).
        Returns whether anything changed."""
        if self.pending:
            return False
        merged = self.current.merged(records, all_record)
        if merged == self.current:
            return False
        self.current = merged
        self._save()
        return True

    def unrecorded(self, records: Mapping[str, bool], all_record: bool | None) -> Change | None:
        """Pauses of the file that the store holds no record of (it came back empty): to write back."""
        nodes = frozenset(n for n in self.current.nodes if n not in records)
        everything = self.current.all and all_record is None
        if not nodes and not everything:
            return None
        return Change(0, nodes, True, everything)


def _change(seq: int, raw: object) -> Change:
    if not (isinstance(raw, list) and len(raw) == 3 and isinstance(raw[0], list)):
        raise ValueError("a pending change is not [nodes, pause, everything]")
    nodes, pause, everything = raw
    typed = isinstance(pause, bool) and isinstance(everything, bool)
    if not typed or not all(isinstance(n, str) for n in nodes):
        raise ValueError("a pending change is mistyped")
    return Change(seq, frozenset(nodes), pause, everything)
