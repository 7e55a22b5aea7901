"""Each shard-lock reading judged whole (decisions/leases.py): the state, the shards the run holds,
the detail word for word, what is remembered for the next reading, and whether to restart. The
rules themselves are in test_leases.py; here nothing of a judgement goes unchecked."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ceres_supervisor.decisions import leases
from ceres_supervisor.decisions.leases import Judgement, Memory

from .test_leases import ALL_MINE, ME, OTHER, STARTED, V122, V127, V200, context, judge, reading

AT = (STARTED + timedelta(seconds=10)).timestamp()
"""When a lease first seen in `reading(...)` is dated (its wall time)."""
BEFORE = (STARTED - timedelta(seconds=20)).timestamp()
KEPT = Memory(reopen_since=50.0, progress=1, lost_since=90.0)


@pytest.mark.parametrize(
    ("name", "view", "memory", "ctx", "expected"),
    [
        ("not read yet", None, KEPT, context(), Judgement("unknown", (), "shard locks not read yet", KEPT)),
        ("read before this run", reading(9.9, ALL_MINE), KEPT, context(),
         Judgement("reopening", (), "waiting for a shard-lock reading since the container started", KEPT)),
        ("unreadable", reading(100, {}, error="etcd: timed out"), KEPT, context(),
         Judgement("unknown", (), "etcd: timed out", KEPT)),
        ("no topology yet", reading(100, {0: (ME, 7)}, assigned={}), KEPT, context(),
         Judgement("unassigned", (0,), "no shards assigned yet", Memory(((7, AT),), None, 1, None))),
        ("assigned elsewhere", reading(100, {}, assigned={OTHER: (0,)}), KEPT, context(),
         Judgement("unassigned", (), "meta assigns no shards to this node", Memory((), None, 1, None))),
        ("held", reading(100, ALL_MINE), KEPT, context(),
         Judgement("held", (0, 2), None, Memory(((7, AT),), None, 1, None))),
        ("previous run's locks", reading(100, {0: (ME, 5), 2: (ME, 6)}), Memory(((5, BEFORE),), 50.0, 1, 90.0), context(),
         Judgement("reopening", (2,), "shards 0 still locked by the previous run until its lease expires",
                   Memory(((5, BEFORE), (6, AT)), None, 1, None))),
        ("another endpoint", reading(100, {0: (OTHER, 9), 2: (OTHER, 9)}), KEPT, context(),
         Judgement("reopening", (), "shards 0,2 locked by another endpoint", Memory((), None, 1, None))),
        ("offline nodes", reading(100, {2: (ME, 7)}), KEPT, context(V127, offline=("db1", "db2")),
         Judgement("reopening", (2,), "shards 0 wait: CeresMeta 1.2.7 reopens nothing while db1, db2 is offline",
                   Memory(((7, AT),), None, 1, None))),
        ("one per tick", reading(100, {}), KEPT, context(V122, old=(1, 3)),
         Judgement("reopening", (), "shards 0,2 wait: CeresMeta 1.2.2 reopens one shard per tick, and shards 1,3 "
                   "are still locked by a previous run", Memory((), None, 1, None))),
        ("the clock starts", reading(100, {2: (ME, 7)}), Memory(), context(V200),
         Judgement("reopening", (2,), "shards 0 not locked yet; CeresMeta 2.0.0 should reopen them within 15s",
                   Memory(((7, AT),), 100, 1, None))),
        ("the clock runs", reading(107, {2: (ME, 7)}), Memory(((7, AT),), 100, 1, None), context(V200),
         Judgement("reopening", (2,), "shards 0 not locked yet; CeresMeta 2.0.0 should reopen them within 8s",
                   Memory(((7, AT),), 100, 1, None))),
        ("progress resets it", reading(130, ALL_MINE | {2: (ME, 7)}, assigned={ME: (0, 2, 4)}),
         Memory(((7, AT),), 100, 1, 120.0), context(V200),
         Judgement("reopening", (0, 2), "shards 4 not locked yet; CeresMeta 2.0.0 should reopen them within 15s",
                   Memory(((7, AT),), 130, 2, None))),
        ("lost", reading(115, {2: (ME, 7)}), Memory(((7, AT),), 100, 1, None), context(V200, grace=10),
         Judgement("lost", (2,), "shards 0 not reopened although CeresMeta 2.0.0 should have by now",
                   Memory(((7, AT),), 100, 1, 115), restart=False, lost_for_s=0.0)),
        ("lost for the grace", reading(125, {2: (ME, 7)}), Memory(((7, AT),), 100, 1, 115), context(V200, grace=10),
         Judgement("lost", (2,), "shards 0 not reopened although CeresMeta 2.0.0 should have by now",
                   Memory(((7, AT),), 100, 1, 115), restart=True, lost_for_s=10.0)),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)  # fmt: skip
def test_each_reading_is_judged_whole(
    name: str, view: object, memory: Memory, ctx: leases.Context, expected: Judgement
) -> None:
    assert judge(view, memory, ctx, run_seen_at=10.0) == expected, name  # type: ignore[arg-type]


def test_a_reading_taken_as_the_run_was_first_seen_counts() -> None:
    assert judge(reading(10.0, ALL_MINE), run_seen_at=10.0).state == "held"


@pytest.mark.parametrize(
    ("first_seen_at", "current"),
    [(STARTED, True), (STARTED - timedelta(microseconds=1), False), (STARTED + timedelta(seconds=1), True)],
)
def test_a_lease_first_seen_as_the_container_started_is_this_run_s(
    first_seen_at: object, current: bool
) -> None:
    memory = Memory(first_seen=((7, first_seen_at.timestamp()),))  # type: ignore[attr-defined]
    now, earlier, _ = leases.classify(reading(100, {0: (ME, 7)}), ME, STARTED, memory)
    assert (now, earlier) == (({0: 7}, {}) if current else ({}, {0: 7}))


def test_without_a_start_time_every_lock_is_this_run_s() -> None:
    memory = Memory(first_seen=((7, BEFORE),))
    now, earlier, kept = leases.classify(reading(100, {0: (ME, 7), 2: (ME, 8)}), ME, None, memory)
    assert (now, earlier, kept.first_seen) == ({0: 7, 2: 8}, {}, ((7, BEFORE), (8, AT)))


def test_shards_locked_but_not_served_are_judged_whole() -> None:
    """Every assigned shard locked by this run, but the node's /debug/shards serves only some:
    reopening, with every shard it does not serve in assignment order, each with its status or
    "not open" when the node does not list it; the shards held are the run's, and the pace and
    loss clocks stop (the locks are there: meta has done its part)."""
    j = judge(
        reading(100, ALL_MINE | {4: (ME, 7)}, assigned={ME: (4, 0, 2)}),
        KEPT,
        served={0: "Opening", 2: "Ready"},
    )
    assert j == Judgement(
        "reopening",
        (0, 2, 4),
        "shards 4 not open, 0 Opening: locked, not open yet (CeresMeta retries a shard whose open failed)",
        Memory(((7, AT),), None, 1, None),
    )
