"""Restart delays and the failure count behind them (README, What each state means). Pure.

The n-th failure since the count was last reset waits 0 for n = 1, then
`backoff_initial` x 2^(n-2), capped at `backoff_max`, and the +-20% jitter is applied after the
cap (so nodes at the cap do not restart in lock-step). The count resets once the node has been
healthy for `backoff_reset`, checked before the new failure is counted. `crashloop_failures`
failures within `crashloop_window` mark the node `crashloop`: it then waits `backoff_max` (with
jitter) between tries, for ever. Nothing here grows with the number of failures: a node at its
5,000th failure costs what it did at its fifth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ceres_supervisor.model.spec import SupervisorSection

JITTER: Final = 0.2
"""Restart delays vary by +-20%: nodes that failed together do not restart together."""
_MAX_DOUBLINGS: Final = 62
"""Past this many doublings every sane backoff_initial is far above any backoff_max."""


@dataclass(frozen=True)
class Policy:
    failure_threshold: int
    start_timeout_s: float
    lease_grace_s: float
    backoff_initial_s: float
    backoff_max_s: float
    backoff_reset_s: float
    crashloop_failures: int
    crashloop_window_s: float

    @classmethod
    def of(cls, s: SupervisorSection) -> Policy:
        return cls(
            s.failure_threshold,
            s.start_timeout,
            s.lease_grace,
            s.backoff_initial,
            s.backoff_max,
            s.backoff_reset,
            s.crashloop_failures,
            s.crashloop_window,
        )


def restart_delay(n: int, policy: Policy, jitter: float, crashloop: bool = False) -> float:
    """Delay before the restart that follows the n-th failure; `jitter` in [-0.2, 0.2]."""
    if crashloop:
        base = policy.backoff_max_s
    elif n <= 1:
        return 0.0
    else:
        doublings = min(n - 2, _MAX_DOUBLINGS)
        base = min(policy.backoff_initial_s * float(1 << doublings), policy.backoff_max_s)
    return base * (1.0 + max(-JITTER, min(JITTER, jitter)))


@dataclass(frozen=True)
class Count:
    """The failure count of one node: what `count` needs and returns."""

    failures: int = 0
    failure_times: tuple[float, ...] = ()
    """Monotonic times of the failures within the crashloop window (bounded by it)."""
    crashloop: bool = False


def reset_if_due(count: Count, healthy_since: float | None, now: float, policy: Policy) -> Count:
    """Healthy for `backoff_reset`: the count starts over (and a crashloop ends)."""
    if healthy_since is not None and count.failures and now - healthy_since >= policy.backoff_reset_s:
        return Count()
    return count


def count(
    previous: Count, healthy_since: float | None, now: float, policy: Policy, jitter: float
) -> tuple[Count, float, bool]:
    """One more failure at `now`: (the new count, the restart delay, whether crashloop began now).

    The reset is checked first, so a node healthy for `backoff_reset` that fails waits 0."""
    current = reset_if_due(previous, healthy_since, now, policy)
    window = (*(t for t in current.failure_times if now - t < policy.crashloop_window_s), now)
    window = window[-policy.crashloop_failures :]
    crashloop = current.crashloop or len(window) >= policy.crashloop_failures
    n = current.failures + 1
    delay = restart_delay(n, policy, jitter, crashloop)
    return Count(n, window, crashloop), delay, crashloop and not current.crashloop
