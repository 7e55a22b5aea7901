"""The store's view built from etcd keys, and the /v1/cluster document. Pure, no etcd."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ceres_supervisor.adapters.etcd import KeyValue
from ceres_supervisor.cluster import view as coordination
from ceres_supervisor.cluster.coordinator import Coordinator
from ceres_supervisor.cluster.view import AgentRecord, Identity, StoreView
from ceres_supervisor.decisions.budget import blockers
from ceres_supervisor.desired import containers, loading
from ceres_supervisor.surfaces import cluster_document

from .conftest import BASE

ROOT = coordination.prefix("defaultCluster")
TWO_HOSTS = BASE.replace('name = "db1"\nhost = "127.0.0.1"', 'name = "db1"\nhost = "127.0.0.2"')


def kv(name: str, value: object) -> KeyValue:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return KeyValue(ROOT + name.encode(), raw, 1, 1, 7)


def changes(puts: list[KeyValue], deletes: list[bytes]) -> list[tuple[bool, KeyValue]]:
    """A watch batch: the deletes, then the puts (each test says which order it means)."""
    return [(True, KeyValue(key, b"", 0, 0, 0)) for key in deletes] + [(False, kv) for kv in puts]


def agent(host: str, nodes: tuple[str, ...], spec_hash: str = "h1") -> AgentRecord:
    return AgentRecord(
        host, 42, "0.2.0", f"{host}:5480", spec_hash, "2026-11-28T00:00:00Z", "2026-11-28T00:01:00Z", nodes
    )


def node_doc(name: str, state: str = "healthy", held: bool | None = True) -> dict[str, object]:
    return {
        "name": name,
        "role": "ceresdb",
        "state": state,
        "reason": None,
        "lease": {"held": held, "shards": [0]},
    }


def test_records_and_their_removal_build_the_view() -> None:
    view = coordination.apply(
        StoreView(),
        ROOT,
        changes(
            [
                kv("agents/127.0.0.2", json.loads(agent("127.0.0.2", ("db1",)).encode())),
                kv("nodes/db1", node_doc("db1")),
                kv("disruptions/db1", {"host": "127.0.0.2", "reason": "unhealthy", "since": "t"}),
                kv("paused/db0", {"since": "t"}),
                kv("paused", {}),
            ],
            [],
        ),
        10,
        reset=True,
    )
    assert view.agent_of("db1") == "127.0.0.2"
    assert view.nodes["db1"]["state"] == "healthy" and view.slots["db1"]["host"] == "127.0.0.2"
    assert view.paused == {"db0"} and view.all_paused
    gone = coordination.apply(
        view, ROOT, changes([], [ROOT + b"agents/127.0.0.2", ROOT + b"paused", ROOT + b"paused/db0"]), 11
    )
    assert gone.agents == {} and "127.0.0.2" in gone.departed
    assert not gone.all_paused and gone.paused == frozenset()
    back = coordination.apply(
        gone,
        ROOT,
        changes([kv("agents/127.0.0.2", json.loads(agent("127.0.0.2", ("db1",)).encode()))], []),
        12,
    )
    assert "127.0.0.2" not in back.departed


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"[1, 2]",
        json.dumps({"host": 1}).encode(),
        b"\xff\xfe",
        json.dumps({**json.loads(agent("x", ()).encode()), "nodes": "db0"}).encode(),
    ],
)
def test_a_record_another_agent_wrote_that_does_not_parse_is_shown_never_trusted(raw: bytes) -> None:
    view = coordination.apply(
        StoreView(), ROOT, changes([kv("agents/x", raw), kv("nodes/db9", raw)], []), 3, reset=True
    )
    assert "x" not in view.agents and "db9" not in view.nodes
    assert set(view.malformed) >= {"agents/x"}
    assert all(why.startswith("cannot parse") for why in view.malformed.values())


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        (None, coordination.UNPUBLISHED),
        (node_doc("db1"), None),
        (node_doc("db1", held=None), None),
        ({**node_doc("db1", held=None), "available": True}, None),  # meta assigns it no shards
        # Recreated, answering GET /, its locks not read since: not serving yet (the next node waits).
        ({**node_doc("db1", held=None), "available": False}, "lease unknown"),
        (
            {**node_doc("meta1", held=None), "role": "meta", "lease": None, "available": False},
            "etcd not healthy",
        ),
        (node_doc("db1", held=False), "without its shards"),
        (node_doc("db1", state="reopening", held=False), "reopening"),
        (node_doc("db1", state="unhealthy", held=True), "unhealthy"),  # its locks notwithstanding
        (node_doc("db1", state="unhealthy", held=False), "unhealthy"),
        (node_doc("db1", state="unknown"), "unknown"),
    ],
)
def test_down_reason_of_a_published_node(doc: dict[str, object] | None, why: str | None) -> None:
    assert coordination.down_reason(doc) == why


def test_a_node_of_the_file_that_no_agent_publishes_counts_against_the_budget() -> None:
    """Its agent is gone (the chaos benchmark: db5 crashed while its agent was down, and another agent
    stopped db0 beside it): nobody knows that it serves, so it is down until published again."""
    coordinator = Coordinator(
        "defaultCluster", Identity(host="127.0.0.1", version="t", listen="x"), 5, lambda: None
    )
    coordinator.connected, coordinator.confirmed_at = True, time.monotonic()
    coordinator.view = coordination.apply(
        StoreView(), ROOT, changes([kv("nodes/db1", node_doc("db1"))], []), 3, reset=True
    )
    roles = {"meta0": "meta", "db0": "ceresdb", "db1": "ceresdb", "db2": "ceresdb"}
    budget = coordinator.budget(1, True, roles, {"db0"}, "h1")
    unknown = coordination.UNPUBLISHED
    assert budget.peers == {"meta0": ("meta", unknown), "db1": ("ceresdb", None), "db2": ("ceresdb", unknown)}
    assert blockers("db0", "ceresdb", {"db0": ("ceresdb", "unhealthy")}, budget) == [f"db2 ({unknown})"]
    published = coordination.apply(coordinator.view, ROOT, changes([kv("nodes/db2", node_doc("db2"))], []), 4)
    coordinator.view = published
    budget = coordinator.budget(1, True, roles, {"db0"}, "h1")
    assert blockers("db0", "ceresdb", {"db0": ("ceresdb", "unhealthy")}, budget) is None


def test_a_timestamp_alone_is_not_worth_a_write() -> None:
    doc = {**node_doc("db1"), "health": {"ok": True, "checked_at": "t1", "detail": "GET / 200"}}
    later = {**doc, "health": {"ok": True, "checked_at": "t2", "detail": "GET / 200"}}
    assert coordination.significant(doc) == coordination.significant(later)
    assert coordination.significant(doc) != coordination.significant({**doc, "state": "unhealthy"})


@pytest.fixture
def two_hosts(tmp_path: Path) -> containers.DesiredCluster:
    path = tmp_path / "c.toml"
    path.write_text(TWO_HOSTS)
    return containers.build(
        loading.load(path).spec, lambda _ref: "", is_local=lambda host: host == "127.0.0.1"
    )


def test_cluster_document_merges_local_published_and_unknown_nodes(
    two_hosts: containers.DesiredCluster,
) -> None:
    local = {"meta0": {"name": "meta0", "state": "healthy"}, "db0": {"name": "db0", "state": "healthy"}}
    store = coordination.apply(
        StoreView(),
        ROOT,
        changes(
            [
                kv("agents/127.0.0.2", json.loads(agent("127.0.0.2", ("db1",)).encode())),
                kv("nodes/db1", node_doc("db1")),
                kv("agents/127.0.0.1", json.loads(agent("127.0.0.1", ("meta0", "db0")).encode())),
            ],
            [],
        ),
        5,
        reset=True,
    )
    doc = cluster_document.document(
        two_hosts, "127.0.0.1", local, store, {"ok": True, "detail": "ok", "endpoint": "e"}, "meta0"
    )
    assert [(n["name"], n["state"], n["agent"]) for n in doc["nodes"]] == [
        ("meta0", "healthy", "127.0.0.1"),
        ("db0", "healthy", "127.0.0.1"),
        ("db1", "healthy", "127.0.0.2"),
    ]
    assert doc["cluster"]["state"] == "healthy" and doc["cluster"]["spec_agrees"]
    assert {a["host"]: a["state"] for a in doc["agents"]} == {"127.0.0.1": "up", "127.0.0.2": "up"}

    gone = coordination.apply(store, ROOT, changes([], [ROOT + b"agents/127.0.0.2", ROOT + b"nodes/db1"]), 6)
    doc = cluster_document.document(
        two_hosts, "127.0.0.1", local, gone, {"ok": True, "detail": "ok", "endpoint": "e"}, None
    )
    db1 = next(n for n in doc["nodes"] if n["name"] == "db1")
    assert db1["state"] == "unknown" and db1["reason"].startswith("supervisor on 127.0.0.2 down since ")
    assert {a["host"]: a["state"] for a in doc["agents"]}["127.0.0.2"] == "down"
    assert doc["cluster"]["state"] == "unknown"


def test_spec_hashes_that_disagree_are_shown(two_hosts: containers.DesiredCluster) -> None:
    store = coordination.apply(
        StoreView(),
        ROOT,
        changes(
            [
                kv("agents/127.0.0.2", json.loads(agent("127.0.0.2", ("db1",), spec_hash="other").encode())),
                kv(
                    "agents/127.0.0.1",
                    json.loads(agent("127.0.0.1", ("meta0", "db0"), spec_hash="mine").encode()),
                ),
            ],
            [],
        ),
        5,
        reset=True,
    )
    doc = cluster_document.document(
        two_hosts, "127.0.0.1", {}, store, {"ok": True, "detail": "ok", "endpoint": None}, None
    )
    assert doc["cluster"]["spec_hashes"] == {"127.0.0.1": "mine", "127.0.0.2": "other"}
    assert not doc["cluster"]["spec_agrees"]


def test_without_the_store_every_other_node_is_unknown(two_hosts: containers.DesiredCluster) -> None:
    local = {"meta0": {"name": "meta0", "state": "healthy"}, "db0": {"name": "db0", "state": "healthy"}}
    doc = cluster_document.document(
        two_hosts,
        "127.0.0.1",
        local,
        StoreView(),
        {"ok": False, "detail": "timed out", "endpoint": None},
        None,
    )
    assert doc["cluster"]["state"] == "unknown"
    db1 = next(n for n in doc["nodes"] if n["name"] == "db1")
    assert (db1["state"], db1["reason"]) == ("unknown", "coordination unavailable: the store cannot be read")
