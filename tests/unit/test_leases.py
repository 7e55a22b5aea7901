"""The shard-lock judgement (docs/real-servers.md section 7): held, reopening or lost, and which rule says so.

Pure: readings, memories and the cluster context are built by hand. Times are monotonic seconds
(readings) and wall times (container starts, lease first sightings).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ceres_supervisor.decisions import leases
from ceres_supervisor.decisions.leases import Context, Memory
from ceres_supervisor.model.observed import LeaseView, ShardLock
from ceres_supervisor.model.versions import Pace

ME = "127.0.0.1:8831"
OTHER = "127.0.0.2:8831"
STARTED = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
"""When the node's container (this run) started."""
LEASE_S = 7.5
"""ceresdb.lease: a heartbeat every 5 s, so that the paces below come out round."""
V122, V127, V200 = (Pace.of(v, LEASE_S) for v in ((1, 2, 2), (1, 2, 7), (2, 0, 0)))


def reading(
    at: float,
    locks: dict[int, tuple[str, int]],
    assigned: dict[str, tuple[int, ...]] | None = None,
    wall_offset_s: float = 10.0,
    error: str | None = None,
) -> LeaseView:
    """A lease reading taken at monotonic `at`, `wall_offset_s` after the container started."""
    return LeaseView(
        at=at,
        checked_at=STARTED + timedelta(seconds=wall_offset_s),
        assigned={ME: (0, 2), OTHER: (1, 3)} if assigned is None else assigned,
        locks={s: ShardLock(holder, lease) for s, (holder, lease) in locks.items()},
        error=error,
    )


def context(
    pace: Pace = V122,
    offline: tuple[str, ...] = (),
    pending: int = 0,
    old: tuple[int, ...] = (),
    grace: float = 60.0,
) -> Context:
    return Context(pace, offline, pending, old, grace)


def judge(
    view: LeaseView | None,
    memory: Memory | None = None,
    ctx: Context | None = None,
    run_seen_at: float = 0.0,
    served: dict[int, str] | None = None,
) -> leases.Judgement:
    return leases.judge(view, ME, STARTED, run_seen_at, memory or Memory(), ctx or context(), served)


ALL_MINE = {0: (ME, 7), 2: (ME, 7), 1: (OTHER, 9), 3: (OTHER, 9)}


def test_every_assigned_shard_locked_by_this_run_is_held() -> None:
    j = judge(reading(100, ALL_MINE))
    assert (j.state, j.shards, j.detail) == ("held", (0, 2), None)
    assert dict(j.memory.first_seen) == {7: (STARTED + timedelta(seconds=10)).timestamp()}


@pytest.mark.parametrize(
    ("view", "detail"),
    [
        (None, "shard locks not read yet"),
        (
            reading(100, {}, error="cannot read shard locks: meta0: timed out"),
            "cannot read shard locks: meta0: timed out",
        ),
    ],
)
def test_unknown_readings_neither_reset_nor_advance_any_clock(view: LeaseView | None, detail: str) -> None:
    memory = Memory(reopen_since=50.0, progress=1, lost_since=90.0)
    j = judge(view, memory, run_seen_at=10.0)
    assert (j.state, j.detail, j.restart) == ("unknown", detail, False)
    assert j.memory == memory


def test_a_run_not_read_yet_is_reopening_never_held_or_healthy() -> None:
    """A reading taken before this run started says nothing of its shards: the node has restarted,
    so it is waiting for them (a lock granted before the start is never held), not unknown
    and healthy; no clock moves."""
    memory = Memory(reopen_since=50.0, progress=1, lost_since=90.0)
    j = judge(reading(5, ALL_MINE), memory, run_seen_at=10.0)
    assert (j.state, j.detail, j.restart) == (
        "reopening",
        "waiting for a shard-lock reading since the container started",
        False,
    )
    assert j.memory == memory


def test_a_shard_locked_but_not_open_is_waited_for() -> None:
    """From 1.2.5 the node says which shards it serves (/debug/shards): one it locked whose tables
    are still opening, or failed to open (PartialOpen, retried by CeresMeta), is not held."""
    view = reading(100, ALL_MINE)
    j = judge(view, Memory(), run_seen_at=10.0, served={0: "Ready", 2: "Opening"})
    assert (j.state, j.restart) == ("reopening", False)
    assert j.detail is not None and "2 Opening" in j.detail
    served = judge(view, Memory(), run_seen_at=10.0, served={0: "Ready", 2: "Ready"})
    assert served.state == "held"
    unread = judge(view, Memory(), run_seen_at=10.0, served=None)  # 1.2.2/1.2.4, or not read: the locks alone
    assert unread.state == "held"


def test_intermittent_read_errors_do_not_postpone_a_restart_for_ever() -> None:
    """Lost, then an etcd timeout, then lost again lease_grace after the first: restarted."""
    ctx = context(V200, grace=5)
    missing = {1: (OTHER, 9), 3: (OTHER, 9)}
    j = judge(reading(100, missing), ctx=ctx)
    assert j.state == "reopening"  # meta may still reopen them (2 ticks of 5 s, a heartbeat)
    j = judge(reading(116, missing), j.memory, ctx)
    assert (j.state, j.restart) == ("lost", False)
    j = judge(reading(118, {}, error="timed out"), j.memory, ctx)
    assert j.state == "unknown"
    j = judge(reading(121, missing), j.memory, ctx)
    assert (j.state, j.restart, j.lost_for_s) == ("lost", True, 5.0)


@pytest.mark.parametrize(
    ("assigned", "detail"),
    [
        ({}, "no shards assigned yet"),
        ({OTHER: (0, 1)}, "meta assigns no shards to this node"),
    ],
)
def test_no_shards_assigned_is_not_a_loss(assigned: dict[str, tuple[int, ...]], detail: str) -> None:
    j = judge(reading(100, {}, assigned=assigned))
    assert (j.state, j.detail) == ("unassigned", detail)


def test_locks_of_the_previous_run_are_reopening_never_held() -> None:
    """Same value (the endpoint), but a lease first seen before the container started."""
    before_start = (STARTED - timedelta(seconds=20)).timestamp()
    memory = Memory(first_seen=((5, before_start),))
    j = judge(reading(100, {0: (ME, 5), 2: (ME, 5), 1: (OTHER, 9), 3: (OTHER, 9)}), memory)
    assert j.state == "reopening" and j.shards == ()
    assert j.detail == "shards 0,2 still locked by the previous run until its lease expires"
    assert j.memory.reopen_since is None  # the scheduler's clock starts once they are gone


def test_a_lease_first_seen_after_the_start_is_this_run() -> None:
    memory = Memory(first_seen=((5, (STARTED - timedelta(seconds=20)).timestamp()),))
    j = judge(reading(100, {0: (ME, 5), 2: (ME, 6), 1: (OTHER, 9), 3: (OTHER, 9)}), memory)
    assert j.state == "reopening" and j.shards == (2,)
    assert "shards 0 still locked by the previous run" in (j.detail or "")
    forgotten = judge(reading(101, ALL_MINE), j.memory)
    assert dict(forgotten.memory.first_seen).keys() == {7}  # leases that left the locks are forgotten


@pytest.mark.parametrize(
    ("pace", "pending", "due_s"),
    [
        # 1.2.2: one shard per 5 s tick for the whole cluster, and it moves on only once the
        # node's next heartbeat (5 s here) reports the shard open
        (V122, 0, 10.0),
        (V122, 7, 80.0),  # ... so 7 pending elsewhere put this one up to 8 such steps away
        (V127, 7, 15.0),  # from 1.2.4 every pending shard goes in one batch: two ticks, a heartbeat
        (V200, 30, 15.0),
    ],
)
def test_missing_shards_wait_for_the_version_s_pace(pace: Pace, pending: int, due_s: float) -> None:
    missing = {1: (OTHER, 9), 3: (OTHER, 9)}
    ctx = context(pace, pending=pending)
    j = judge(reading(100, missing), ctx=ctx)
    assert j.state == "reopening" and j.memory.reopen_since == 100
    j = judge(reading(100 + due_s - 0.5, missing), j.memory, ctx)
    assert j.state == "reopening"
    j = judge(reading(100 + due_s, missing), j.memory, ctx)
    assert (j.state, j.restart) == ("lost", False)
    assert j.detail == f"shards 0,2 not reopened although CeresMeta {pace.label} should have by now"


def test_progress_restarts_the_pace_clock() -> None:
    ctx = context(V122, pending=3)
    j = judge(reading(100, {1: (OTHER, 9), 3: (OTHER, 9)}), ctx=ctx)
    j = judge(reading(118, {0: (ME, 7), 1: (OTHER, 9), 3: (OTHER, 9)}), j.memory, ctx)  # shard 0 came back
    assert j.state == "reopening" and j.memory.reopen_since == 118
    j = judge(reading(157, {0: (ME, 7), 1: (OTHER, 9), 3: (OTHER, 9)}), j.memory, ctx)
    assert j.state == "reopening"  # due at 118 + 4 x (tick + heartbeat)


@pytest.mark.parametrize(("pace", "held_back"), [(V122, True), (V127, True), (V200, False)])
def test_an_offline_assigned_node_stops_every_reopen_up_to_1_2_7(pace: Pace, held_back: bool) -> None:
    ctx = context(pace, offline=("db1",))
    j = judge(reading(100, {}), Memory(reopen_since=0.0), ctx)
    if held_back:
        assert j.state == "reopening" and j.memory.reopen_since is None
        assert j.detail == f"shards 0,2 wait: CeresMeta {pace.label} reopens nothing while db1 is offline"
        j = judge(reading(1000, {}), j.memory, ctx)
        assert j.state == "reopening" and not j.restart  # however long it lasts
    else:
        assert j.state == "lost"  # 2.0.0 skips the offline node: the clock ran since 0


def test_at_1_2_2_old_locks_anywhere_hold_the_single_reopen_queue() -> None:
    ctx = context(V122, old=(1,))
    j = judge(reading(100, {}), Memory(reopen_since=0.0), ctx)
    assert j.state == "reopening"
    assert "reopens one shard per tick, and shards 1 are still locked by a previous run" in (j.detail or "")
    assert judge(reading(100, {}), Memory(reopen_since=0.0), replace(ctx, pace=V127)).state == "lost"


def test_lost_is_restarted_only_after_the_grace_measured_between_readings() -> None:
    ctx = context(V200, grace=60)
    memory = Memory(reopen_since=0.0, progress=0)
    j = judge(reading(100, {}), memory, ctx)
    assert (j.state, j.restart, j.memory.lost_since) == ("lost", False, 100)
    j = judge(reading(159, {}), j.memory, ctx)
    assert (j.state, j.restart) == ("lost", False)
    j = judge(reading(160, {}), j.memory, ctx)
    assert (j.state, j.restart, j.lost_for_s) == ("lost", True, 60.0)


def test_locks_back_end_the_loss() -> None:
    j = judge(reading(300, ALL_MINE), Memory(reopen_since=0.0, lost_since=100.0))
    assert j.state == "held" and j.memory.reopen_since is None and j.memory.lost_since is None


def test_a_shard_locked_by_another_endpoint_is_waited_for() -> None:
    j = judge(reading(100, {0: (OTHER, 9), 2: (ME, 7), 1: (OTHER, 9), 3: (OTHER, 9)}))
    assert (j.state, j.detail) == ("reopening", "shards 0 locked by another endpoint")


@pytest.mark.parametrize(
    ("version", "one", "blocks"),
    [
        ((1, 2, 2), True, True),
        ((1, 2, 4), False, True),
        ((1, 2, 7), False, True),
        ((2, 0, 0), False, False),
    ],
)
def test_pace_by_version(version: tuple[int, int, int], one: bool, blocks: bool) -> None:
    pace = Pace.of(version, LEASE_S)
    assert (pace.one_per_tick, pace.offline_blocks) == (one, blocks)
    assert pace.full_reopen_s(4) == (50.0 if one else 15.0)
