"""What makes a node's record worth writing to the store again (`view.significant`): the other
agents count a node against the disruption budget from its lease and its probe's verdict, so a
change of either must reach them at once; a node without them (a meta member, a node never probed)
still has a mark. Pure."""

from __future__ import annotations

from typing import Any

import pytest

from ceres_supervisor.cluster import view as views


def ceresdb(
    held: bool | None = True, shards: list[int] | None = None, ok: bool | None = True
) -> dict[str, Any]:
    return {
        "name": "db0",
        "role": "ceresdb",
        "state": "healthy",
        "reason": None,
        "health": {"ok": ok, "detail": "GET / 200", "checked_at": "t1"},
        "lease": {"held": held, "shards": [0, 1] if shards is None else shards, "detail": None},
        "restarts": 0,
    }


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (ceresdb(held=True), ceresdb(held=False)),  # it lost its shards: it counts as down
        (ceresdb(held=None), ceresdb(held=True)),  # its shards were judged
        (ceresdb(shards=[0, 1]), ceresdb(shards=[0])),  # meta moved a shard away
        (ceresdb(ok=True), ceresdb(ok=False)),  # its probe failed
        (ceresdb(ok=None), ceresdb(ok=True)),  # its first probe answered
    ],
)
def test_a_change_of_the_lease_or_of_the_probe_s_verdict_is_worth_a_write(
    before: dict[str, Any], after: dict[str, Any]
) -> None:
    assert views.significant(before) != views.significant(after)


def test_the_lease_s_detail_and_the_probe_s_text_alone_are_not() -> None:
    doc = ceresdb()
    later = {
        **doc,
        "lease": {**doc["lease"], "detail": "locks read"},
        "health": {**doc["health"], "detail": "GET / 200 in 3 ms", "checked_at": "t2"},
    }
    assert views.significant(doc) == views.significant(later)


def test_a_node_without_a_lease_or_a_probe_has_a_mark() -> None:
    """A meta member has no lease (`null`); a node never probed may have no health object."""
    meta = {"name": "meta0", "role": "meta", "state": "healthy", "lease": None, "health": None}
    assert views.significant(meta) == views.significant(dict(meta))
    assert views.significant(meta) != views.significant({**meta, "health": {"ok": False}})


def _view(**fields: Any) -> views.StoreView:
    agent = views.AgentRecord("a", 1, "t", "a:1", "h1", "t0", "t1", ("db0",))
    base: dict[str, Any] = {"revision": 5, "agents": {"a": agent}, "nodes": {"db0": ceresdb()}}
    return views.StoreView(**{**base, **fields})


AGENT = views.AgentRecord("a", 1, "t", "a:1", "h1", "t0", "t1", ("db0",))


@pytest.mark.parametrize(
    ("after", "only"),
    [
        (
            _view(
                revision=9, agents={"a": views.AgentRecord("a", 1, "t", "a:1", "h1", "t0", "t9", ("db0",))}
            ),
            True,
        ),
        (_view(revision=9), True),
        (_view(agents={"a": views.AgentRecord("a", 1, "t", "a:1", "h2", "t0", "t1", ("db0",))}), False),
        (_view(agents={}), False),
        (_view(nodes={"db0": ceresdb(held=False)}), False),
        (_view(slots={"db0": {"host": "a"}}), False),
        (_view(pauses={"db0": True}), False),
        (_view(all_paused=False), False),
        (_view(claims={"operation": {"host": "a"}}), False),
        (_view(malformed={"nodes/x": "not JSON"}), False),
        (_view(departed={"b": (AGENT, "t2")}), False),
    ],
)
def test_only_a_change_of_heartbeats_leaves_the_loop_asleep(after: views.StoreView, only: bool) -> None:
    assert views.heartbeat_only(_view(), after) is only
