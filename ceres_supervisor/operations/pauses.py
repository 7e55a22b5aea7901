"""Operator pauses (README, Maintenance), kept where they survive everything but an operator's resume.

A paused node is never started, stopped or restarted by any supervisor. The pause lives in two
places: `<state_dir>/paused.json` on each machine (it holds across supervisor restarts and while
CeresMeta's etcd is down) and, with the store, `/ceres-supervisor/<cluster>/paused[/<node>]`
(it holds on every machine). The store is the truth when it answers: its changes are mirrored
into the file. A pause or resume asked while the store is away is applied to the file at once and
pushed to the store when it is back.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ceres_supervisor.desired import files

PAUSED_FILE: Final = "paused.json"


@dataclass(frozen=True)
class Pauses:
    all: bool = False
    nodes: frozenset[str] = frozenset()

    def change(self, nodes: frozenset[str], pause: bool, everything: bool) -> Pauses:
        if everything:
            return Pauses(pause, self.nodes if pause else frozenset())
        return Pauses(self.all, self.nodes | nodes if pause else self.nodes - nodes)


@dataclass
class PauseBook:
    """The pauses as this agent holds them, and the changes the store has not taken yet."""

    path: Path
    current: Pauses = field(default_factory=Pauses)
    pending: list[tuple[frozenset[str], bool, bool]] = field(default_factory=list)
    """(nodes, pause, everything) asked while the store was away, in order."""

    @classmethod
    def open(cls, state_dir: str) -> PauseBook:
        book = cls(Path(state_dir) / PAUSED_FILE)
        with contextlib.suppress(OSError, ValueError, TypeError):
            doc = json.loads(book.path.read_text())
            book.current = Pauses(bool(doc.get("all")), frozenset(str(n) for n in doc.get("nodes") or []))
            book.pending = [(frozenset(p[0]), bool(p[1]), bool(p[2])) for p in doc.get("pending") or []]
        return book

    def _save(self) -> None:
        doc = {
            "all": self.current.all,
            "nodes": sorted(self.current.nodes),
            "pending": [[sorted(n), p, e] for n, p, e in self.pending],
        }
        files.write_atomic(self.path, json.dumps(doc, indent=1).encode(), files.PLAIN_MODE)

    def apply(self, nodes: frozenset[str], pause: bool, everything: bool, queued: bool) -> None:
        """An operator's pause or resume; `queued` when the store could not take it now."""
        self.current = self.current.change(nodes, pause, everything)
        if queued:
            self.pending.append((nodes, pause, everything))
        self._save()

    def mirror(self, store: Pauses) -> None:
        """The store's pauses (only once nothing local is waiting to be pushed)."""
        if not self.pending and store != self.current:
            self.current = store
            self._save()

    def pushed(self) -> None:
        self.pending.clear()
        self._save()
