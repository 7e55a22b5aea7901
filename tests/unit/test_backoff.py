"""Restart delays and the failure count, exactly as README says. Pure, table-driven."""

from __future__ import annotations

import pytest

from ceres_supervisor.decisions import backoff
from ceres_supervisor.decisions.backoff import Count, Policy

POLICY = Policy(
    failure_threshold=3,
    start_timeout_s=120,
    lease_grace_s=60,
    backoff_initial_s=1,
    backoff_max_s=60,
    backoff_reset_s=600,
    crashloop_failures=5,
    crashloop_window_s=600,
)


@pytest.mark.parametrize(
    ("n", "jitter", "crashloop", "delay"),
    [
        (1, 0.0, False, 0.0),  # the first failure waits nothing
        (1, 0.2, False, 0.0),  # ... not even jitter
        (2, 0.0, False, 1.0),  # backoff_initial x 2^0
        (3, 0.0, False, 2.0),
        (4, 0.1, False, 4.4),  # jitter on the doubled delay
        (5, 0.2, False, 9.6),
        (6, -0.2, False, 12.8),
        (8, 0.0, False, 60.0),  # 64 s capped at backoff_max
        (8, 0.2, False, 72.0),  # jitter after the cap: capped nodes do not restart together
        (8, -0.2, False, 48.0),
        (20, 0.1, False, 66.0),
        (1026, 0.0, False, 60.0),  # 2.0 ** 1024 used to raise OverflowError here
        (5000, -0.1, False, 54.0),  # a node at its 5,000th failure
        (10**9, 0.0, False, 60.0),
        (1, 0.0, True, 60.0),  # a crashloop waits backoff_max whatever n is
        (5, 0.0, True, 60.0),  # (it used to wait 8 s at n = 5)
        (5, 0.2, True, 72.0),
        (5000, 0.0, True, 60.0),
        (2, 0.5, False, 1.2),  # jitter is clamped to +-20%
    ],
)
def test_restart_delay(n: int, jitter: float, crashloop: bool, delay: float) -> None:
    assert backoff.restart_delay(n, POLICY, jitter, crashloop) == pytest.approx(delay)


def test_reset_is_checked_before_the_new_failure_is_counted() -> None:
    """Healthy for 601 s with backoff_reset = 10m, then a crash: it is failure 1 again (waits 0)."""
    previous = Count(4, (100.0, 200.0, 300.0, 400.0), False)
    count, delay, began = backoff.count(previous, healthy_since=1000.0, now=1601.0, policy=POLICY, jitter=0.2)
    assert (count.failures, delay, began) == (1, 0.0, False)
    assert count.failure_times == (1601.0,)


def test_not_healthy_long_enough_keeps_counting() -> None:
    previous = Count(2, (900.0, 950.0), False)
    count, delay, _began = backoff.count(
        previous, healthy_since=1000.0, now=1599.0, policy=POLICY, jitter=0.0
    )
    assert (count.failures, delay) == (3, 2.0)


def test_a_crashloop_starts_at_the_fifth_failure_in_the_window_and_waits_the_maximum() -> None:
    previous = Count(4, (1000.0, 1001.0, 1002.0, 1003.0), False)
    count, delay, began = backoff.count(previous, None, 1004.0, POLICY, 0.0)
    assert count.crashloop and began and count.failures == 5
    assert delay == 60.0


def test_failures_outside_the_window_do_not_make_a_crashloop() -> None:
    previous = Count(4, (100.0, 200.0, 300.0, 390.0), False)
    count, delay, began = backoff.count(previous, None, 1000.0, POLICY, 0.0)
    assert not count.crashloop and not began
    assert count.failure_times == (1000.0,)
    assert delay == 8.0  # the fifth failure since the reset, not a crashloop


def test_a_crashloop_lasts_until_the_reset_without_growing() -> None:
    count = Count(5, (0.0, 1.0, 2.0, 3.0, 4.0), True)
    for i in range(5000):
        count, delay, began = backoff.count(count, None, 10.0 + 61 * i, POLICY, 0.0)
        assert delay == 60.0 and not began
    assert count.crashloop and count.failures == 5005
    assert len(count.failure_times) <= POLICY.crashloop_failures  # no memory growth however long it runs
    reset = backoff.reset_if_due(count, healthy_since=0.0, now=600.0, policy=POLICY)
    assert reset == Count()


def test_reset_needs_failures_and_a_healthy_run() -> None:
    assert backoff.reset_if_due(Count(), 0.0, 10_000.0, POLICY) == Count()
    busy = Count(3, (1.0,), False)
    assert backoff.reset_if_due(busy, None, 10_000.0, POLICY) is busy
    assert backoff.reset_if_due(busy, 9_500.0, 10_000.0, POLICY) is busy
