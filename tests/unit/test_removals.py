"""Containers of nodes taken out of the file are removed through the same budget as every stop by
choice (decisions/gate.py `retire`, through the planner): each removal whole, one at a time, and a
removal in flight counts against the budget until it is done. Pure, through planning.plan."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ceres_supervisor.decisions.planning import Action, Controls
from ceres_supervisor.desired import containers

from .test_planning import failing, healthy_records, observation, orphan, plan, running, with_orphans

REMOVED = "removed from the desired-state file"


@pytest.fixture
def big(tmp_path: object) -> containers.DesiredCluster:
    from .test_planning import META3, build  # noqa: PLC0415

    return build(tmp_path, META3)  # type: ignore[arg-type]


def test_each_removal_is_decided_whole_one_stop_by_choice_at_a_time(big: containers.DesiredCluster) -> None:
    cs, probes = running(big)
    obs = with_orphans(
        observation(big, cs, probes=probes),
        orphan("db7"), orphan("db8", state="exited"), orphan("db9"), orphan("db6"),
    )  # fmt: skip
    p = plan(
        big, replace(obs, busy={"db7": "remove"}), healthy_records(cs), controls=Controls(frozenset({"db9"}))
    )
    assert p.actions == (Action("remove", "db8", "id-db8", REMOVED, role="ceresdb"),)
    assert p.retiring == {
        "db9": "paused by the operator: not removed while paused",
        "db6": "waiting for disruption budget: db7 (stopping)",
    }


def test_a_removal_in_flight_counts_against_the_budget_until_it_is_done(
    big: containers.DesiredCluster,
) -> None:
    """db9's removal is a stop by choice: while it runs, neither another removal nor another stop by
    choice may take a second CeresDB node down (max_unavailable 1)."""
    cs, probes = running(big)
    obs = with_orphans(observation(big, cs, probes=probes), orphan("db9"), orphan("db6"))
    first = plan(big, obs, healthy_records(cs))
    assert first.actions == (Action("remove", "db9", "id-db9", REMOVED, by_choice=True, role="ceresdb"),)
    assert first.retiring == {"db6": "waiting for disruption budget: db9 (stopping)"}
    removing = plan(big, replace(obs, busy={"db9": "remove"}), first.records)
    assert removing.actions == ()
    assert removing.retiring == {"db6": "waiting for disruption budget: db9 (stopping)"}
    cs, probes, records = failing(big, "db0")
    unhealthy = with_orphans(observation(big, cs, probes=probes), orphan("db9"))
    held = plan(big, replace(unhealthy, busy={"db9": "remove"}), records)
    assert held.actions == ()
    assert (held.views["db0"].reason or "").endswith("waiting for disruption budget: db9 (stopping)")
    done = plan(big, observation(big, cs, probes=probes), records)  # db9 gone: db0 may go
    assert [(a.kind, a.node) for a in done.actions] == [("stop", "db0")]
