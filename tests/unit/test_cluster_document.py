"""The /v1/cluster document (README, The status API): every node of the file once, from this agent's own
view, the other agents' records, or `unknown` with who ran it and since when. Pure, from real
desired clusters and store views."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ceres_supervisor.cluster.view import AgentRecord, StoreView
from ceres_supervisor.surfaces import cluster_document

from .scenes import META3, agent_record, build

HERE = "127.0.0.1"
THERE = "127.0.0.2"
COORDINATION = {"ok": True, "detail": "connected", "endpoint": "http://m0:2379", "revision": 9, "age_s": 0.1}
AWAY = {**COORDINATION, "ok": False, "detail": "no member answers"}


def split_file(tmp_path: Path) -> Any:
    """META3 with meta2, db1 and db2 on another machine (127.0.0.2)."""
    text = META3
    for name in ("meta2", "db1", "db2"):
        text = text.replace(f'name = "{name}"\nhost = "127.0.0.1"', f'name = "{name}"\nhost = "{THERE}"')
    return build(tmp_path, text, local=lambda host: host == HERE)


def published(name: str, state: str = "healthy", role: str = "ceresdb") -> dict[str, Any]:
    return {"name": name, "role": role, "host": THERE, "state": state, "reason": None}


def local(desired: Any, state: str = "healthy") -> dict[str, dict[str, Any]]:
    return {n.name: {"name": n.name, "role": n.role, "state": state} for n in desired.nodes if n.is_local}


@pytest.fixture
def desired(tmp_path: Path) -> Any:
    return split_file(tmp_path)


def document(
    desired: Any, store: StoreView, coordination: dict[str, Any] = COORDINATION, **kwargs: Any
) -> dict[str, Any]:
    return cluster_document.document(
        desired, HERE, kwargs.get("local", local(desired)), store, coordination, kwargs.get("leader", "meta0")
    )


def there(nodes: tuple[str, ...] = ("meta2", "db1", "db2"), **changes: Any) -> AgentRecord:
    return agent_record(THERE, nodes, **changes)


def test_every_node_appears_once_with_the_agent_that_runs_it(desired: Any) -> None:
    store = StoreView(
        9,
        agents={THERE: there()},
        nodes={"meta2": published("meta2", role="meta"), "db1": published("db1"), "db2": published("db2")},
    )
    doc = document(desired, store)
    assert [(n["name"], n["agent"], n["state"]) for n in doc["nodes"]] == [
        ("meta0", HERE, "healthy"),
        ("meta1", HERE, "healthy"),
        ("meta2", THERE, "healthy"),
        ("db0", HERE, "healthy"),
        ("db1", THERE, "healthy"),
        ("db2", THERE, "healthy"),
    ]
    assert doc["cluster"]["state"] == "healthy" and doc["cluster"]["name"] == "defaultCluster"
    assert doc["meta"] == {"leader": "meta0", "members": ["meta0", "meta1", "meta2"]}
    assert [(a["host"], a["state"]) for a in doc["agents"]] == [(HERE, "up"), (THERE, "up")]
    assert doc["agents"][1] == {
        "host": THERE,
        "state": "up",
        "heartbeat_at": "2026-11-26T00:00:01.000Z",
        "listen": f"{THERE}:5480",
        "advertise": f"http://{THERE}:5480",
        "since": None,
    }
    assert doc["coordination"] == {**COORDINATION, "unreadable": []}
    assert doc["disruptions"] == [] and doc["paused"] == {"all": False, "nodes": []}


@pytest.mark.parametrize(
    ("store", "coordination", "reason", "agent"),
    [
        (StoreView(9, agents={THERE: there()}), COORDINATION, f"supervisor on {THERE} has not published it yet", THERE),
        (StoreView(9, departed={THERE: (there(), "2026-11-26T04:00:00.000Z")}), COORDINATION,
         f"supervisor on {THERE} down since 2026-11-26T04:00:00.000Z", THERE),
        (StoreView(9), COORDINATION, f"no supervisor publishes it (its host is {THERE})", None),
        (StoreView(9, agents={THERE: there()}, nodes={"db1": published("db1")}), AWAY,
         "coordination unavailable: the store cannot be read", THERE),
    ],
    ids=["not-published-yet", "agent-departed", "no-agent", "store-away"],
)  # fmt: skip
def test_a_node_no_live_agent_publishes_is_unknown_and_says_why(
    desired: Any, store: StoreView, coordination: dict[str, Any], reason: str, agent: str | None
) -> None:
    doc = document(desired, store, coordination)
    db1 = next(n for n in doc["nodes"] if n["name"] == "db1")
    assert (db1["state"], db1["reason"], db1["agent"]) == ("unknown", reason, agent)
    assert db1["lease"] == {"held": None, "shards": [], "detail": None} and db1["restarts"] is None
    assert db1["ports"] == {"grpc": 8832, "http": 5441, "mysql": 3308} and db1["host"] == THERE
    meta2 = next(n for n in doc["nodes"] if n["name"] == "meta2")
    assert meta2["lease"] is None
    assert doc["cluster"]["state"] == "unknown"


def test_agents_that_left_or_were_never_seen_are_listed_down(desired: Any, tmp_path: Path) -> None:
    doc = document(desired, StoreView(9, departed={THERE: (there(), "2026-11-26T04:00:00.000Z")}))
    assert [(a["host"], a["state"], a["since"]) for a in doc["agents"]] == [
        (HERE, "up", None),
        (THERE, "down", "2026-11-26T04:00:00.000Z"),
    ]
    never = document(desired, StoreView(9))  # a machine of the file whose agent never wrote a record
    assert [(a["host"], a["state"], a["heartbeat_at"]) for a in never["agents"]] == [
        (HERE, "up", None),
        (THERE, "down", None),
    ]


def test_this_agent_is_listed_first_when_the_store_does_not_have_it_yet(desired: Any) -> None:
    doc = document(desired, StoreView(9, agents={THERE: there()}))
    assert doc["agents"][0] == {
        "host": HERE, "state": "up", "heartbeat_at": None, "listen": None, "advertise": None, "since": None,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("states", "agent_up", "expected"),
    [
        (["healthy"], True, "healthy"),
        (["healthy"], False, "starting"),
        (["healthy", "unknown", "unhealthy"], True, "unknown"),
        (["healthy", "unhealthy"], True, "degraded"),
        (["healthy", "lease_lost"], True, "degraded"),
        (["healthy", "backoff"], True, "degraded"),
        (["crashloop"], True, "degraded"),
        (["paused", "healthy"], True, "degraded"),
        (["stopped"], True, "stopped"),
        (["stopped", "starting"], True, "starting"),
        (["reopening", "healthy"], True, "starting"),
    ],
)
def test_the_cluster_state_is_healthy_only_when_every_node_and_agent_is(
    desired: Any, states: list[str], agent_up: bool, expected: str
) -> None:
    nodes = {n: published(n, state=states[i % len(states)]) for i, n in enumerate(("meta2", "db1", "db2"))}
    mine = {n: {**doc, "state": states[-1 if i else 0]} for i, (n, doc) in enumerate(local(desired).items())}
    record = there()
    store = (
        StoreView(9, agents={THERE: record}, nodes=nodes)
        if agent_up
        else StoreView(
            9,
            agents={THERE: record},
            nodes=nodes,
            departed={"127.0.0.3": (agent_record("127.0.0.3", ()), "t")},
        )
    )
    assert document(desired, store, local=mine)["cluster"]["state"] == expected


def test_agents_whose_files_differ_are_shown(desired: Any) -> None:
    same = document(desired, StoreView(9, agents={THERE: there(spec_hash=desired.spec_hash)}))
    assert same["cluster"]["spec_hashes"] == {THERE: desired.spec_hash, HERE: desired.spec_hash}
    assert same["cluster"]["spec_agrees"] is True
    differ = document(desired, StoreView(9, agents={THERE: there(spec_hash="0ld")}))
    assert differ["cluster"]["spec_hashes"] == {THERE: "0ld", HERE: desired.spec_hash}
    assert differ["cluster"]["spec_agrees"] is False


def test_slots_pauses_and_unreadable_records_are_shown(desired: Any) -> None:
    store = StoreView(
        9,
        agents={THERE: there()},
        slots={"db1": {"host": THERE, "reason": "planned restart", "since": "t"}},
        pauses={"db0": True, "db2": False},
        all_paused=True,
        malformed={"nodes/db9": "cannot parse: not an object with name, role, state"},
    )
    doc = document(desired, store)
    assert doc["disruptions"] == [{"node": "db1", "host": THERE, "reason": "planned restart", "since": "t"}]
    assert doc["paused"] == {"all": True, "nodes": ["db0"]}
    assert doc["coordination"]["unreadable"] == [
        {"key": "nodes/db9", "why": "cannot parse: not an object with name, role, state"}
    ]
