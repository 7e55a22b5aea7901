"""The project's exception hierarchy. Every error the user can see derives from `CeresError`.

Exceptions here never log themselves: they are logged once, where they are handled.
"""

from __future__ import annotations

from dataclasses import dataclass


class CeresError(Exception):
    """Root of every error this project raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth a warning) in a desired-state file, with its dotted key path."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class DesiredStateError(CeresError):
    """The desired-state file cannot be used. Carries every problem found, each with its path."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        count = len(self.problems)
        lines = [f"{self.source}: invalid desired state ({count} problem{'' if count == 1 else 's'})"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


class SecretError(CeresError):
    """A secret reference could not be resolved. The message never contains a secret value."""


class FatalError(CeresError):
    """The daemon cannot go on; it exits non-zero."""


class SlotRefused(CeresError):
    """The store refused a disruption slot: the stop waits (not a failure)."""
