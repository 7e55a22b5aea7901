"""When the coordinator stops renewing its lease (liveness tied to progress, see
cluster/coordinator.py): a reconcile loop that completed no cycle for 2/3 of the TTL + 1 s, or a
Docker Engine that could not be observed for ENGINE_LOST_TTLS TTLs. Pure: the loop's cycles are
handed over on a clock the test sets, and the decision is asked at times the test chooses."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ceres_supervisor.cluster import coordinator as coordinators
from ceres_supervisor.cluster.coordinator import ENGINE_LOST_TTLS, Coordinator
from ceres_supervisor.cluster.view import Identity


class Clock:
    """The coordinator's monotonic clock, set by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock(100.0)
    monkeypatch.setattr(coordinators, "time", SimpleNamespace(monotonic=clock.monotonic))
    return clock


def cycle(c: Coordinator, clock: Clock, at: float, engine_error: str | None = None) -> None:
    """A reconcile cycle completed at `at`."""
    clock.now = at
    c.progress(engine_error)


def test_renewals_stop_once_the_loop_completed_no_cycle_for_two_thirds_of_the_ttl_and_a_second(
    clock: Clock,
) -> None:
    """TTL 3 s: the lease is kept while the last cycle is under 3 s old (2/3 x 3 + 1), and no longer
    past it, saying for how long the loop is stuck."""
    c = Coordinator("c", Identity("a", "t", "a:1"), 3.0, lambda: None)
    cycle(c, clock, 100.0)
    assert c._why_not_renew(102.9) is None
    assert c._why_not_renew(103.1) == "the reconcile loop completed no cycle for 3s"
    cycle(c, clock, 103.2)
    assert c._why_not_renew(103.3) is None


def test_renewals_stop_once_docker_could_not_be_observed_for_three_ttls(clock: Clock) -> None:
    """TTL 3 s, the loop cycling but Docker lost since t=100: the lease is kept for 3 TTLs (9 s),
    then no longer, saying since when; a cycle that observes Docker again clears it, and a loss
    after that counts from its own start."""
    assert ENGINE_LOST_TTLS == 3
    c = Coordinator("c", Identity("a", "t", "a:1"), 3.0, lambda: None)
    cycle(c, clock, 100.0, "docker engine not answering")
    cycle(c, clock, 108.5, "docker engine not answering")
    assert c._why_not_renew(108.9) is None
    cycle(c, clock, 109.0, "docker engine not answering")
    assert c._why_not_renew(109.2) == "the Docker Engine could not be observed for 9s"
    cycle(c, clock, 109.5)
    assert c._why_not_renew(109.6) is None
    cycle(c, clock, 110.0, "docker engine not answering")
    cycle(c, clock, 118.5, "docker engine not answering")
    assert c._why_not_renew(118.9) is None
