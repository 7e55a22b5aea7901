"""The on-call's read routes (events cluster-wide, logs, describe) and the atomic multi-node pause,
on aiohttp's in-process servers: two agents, each with its own journal and container logs, the
second reached through the address it publishes in the store, with the API's own token and error
middlewares. The daemon behind each is a small stand-in that holds real snapshots and journals;
the container logs come from a reader that speaks the engine's `logs` call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ceres_supervisor.adapters.engine import EngineError
from ceres_supervisor.cluster.view import AgentRecord, StoreView
from ceres_supervisor.decisions.planning import NodeState
from ceres_supervisor.desired.containers import DesiredCluster
from ceres_supervisor.operations.pauses import PauseBook
from ceres_supervisor.surfaces import api, control_routes, inspect_routes, journal, seams
from ceres_supervisor.surfaces.seams import agent_url
from ceres_supervisor.surfaces.snapshot import Coordination, Event, ReloadResult, Snapshot

from .conftest import BASE
from .sample import NOW, desired_cluster, healthy_observation, plan_of

TOKEN = "s3cret-token"
T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
TWO_HOSTS = BASE.replace('name = "db1"\nhost = "127.0.0.1"', 'name = "db1"\nhost = "127.0.0.2"')


@dataclass
class Logs:
    """Container logs as the engine's `logs` gives them; `broken` makes the engine fail."""

    lines: dict[str, list[tuple[str, str]]]
    broken: bool = False
    asked: list[tuple[str, int, float | None]] = field(default_factory=list)

    async def logs(
        self, container_id: str, lines: int, since_s: float | None = None
    ) -> list[tuple[str, str]]:
        self.asked.append((container_id, lines, since_s))
        if self.broken:
            raise EngineError("Docker Engine unavailable: no socket at /run/docker.sock")
        return self.lines.get(container_id, [])[-lines:]


@dataclass
class Agent:
    """What the routes ask of a daemon: its snapshot, journal, engine and pauses."""

    snapshot: Snapshot
    events: journal.Journal
    engine: Logs
    pauses: PauseBook = field(default_factory=lambda: PauseBook(Path("/nonexistent/paused.json")))
    paused: list[tuple[frozenset[str], bool, bool]] = field(default_factory=list)

    # control_routes.Daemon, for the pause routes
    operations: Any = None
    current_plan: Any = None

    @property
    def current_desired(self) -> DesiredCluster:
        return self.snapshot.desired

    def leader(self) -> str | None:
        return None

    async def pause(self, nodes: frozenset[str], pause: bool, everything: bool) -> str:
        self.paused.append((nodes, pause, everything))
        return "store and file"

    def spawn(self, coro: Any, name: str) -> None:
        raise AssertionError("no operation here")

    def record_event(self, node: str | None, type_: str, reason: str | None, message: str) -> None:
        self.events.append(Event(datetime.now(UTC), node, type_, reason, message))


def agent(host: str, port: int, nodes: tuple[str, ...], spec_hash: str) -> AgentRecord:
    return AgentRecord(host, 1, "0.2.0", f"127.0.0.1:{port}", spec_hash, "t", "t", nodes)


def event(minute: int, node: str | None, type_: str, reason: str | None = None, message: str = "") -> Event:
    return Event(T0 + timedelta(minutes=minute), node, type_, reason, message or f"{type_} at {minute}")


def application(daemon: Agent, token: str | None) -> web.Application:
    """The routes under the API's own middlewares (its JSON errors and its token rule)."""
    front = api.Api(daemon, token)  # type: ignore[arg-type]  # only its middlewares are used
    app = web.Application(middlewares=[front.errors, front.auth])
    control_routes.Routes(daemon).add_to(app)  # type: ignore[arg-type]
    inspect_routes.Routes(daemon, token).add_to(app)
    return app


@dataclass
class Pair:
    """Agent one runs meta0 and db0 (127.0.0.1); agent two runs db1 (127.0.0.2)."""

    one: Agent
    two: Agent
    client: TestClient
    server_two: TestServer

    async def get(self, path: str, token: str | None = TOKEN) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.client.get(path, headers=headers) as response:
            return response.status, await response.json()

    async def post(self, path: str, body: object) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with self.client.post(path, json=body, headers=headers) as response:
            return response.status, await response.json()


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    one_desired = desired_cluster(tmp_path, TWO_HOSTS, is_local=lambda host: host == "127.0.0.1")
    (tmp_path / "two").mkdir()
    two_desired = desired_cluster(tmp_path / "two", TWO_HOSTS, is_local=lambda host: host == "127.0.0.2")
    one_obs, two_obs = healthy_observation(one_desired), healthy_observation(two_desired)
    two = Agent(
        Snapshot(
            1,
            NOW,
            two_desired,
            ReloadResult(True, None, None),
            5.0,
            "127.0.0.2",
            two_obs,
            plan_of(
                {"meta0": NodeState.REMOTE, "db0": NodeState.REMOTE, "db1": (NodeState.CRASHLOOP, "exit 3")}
            ),
            {},
            None,
            coordination=Coordination(True, "ok", None, True),
        ),
        journal.Journal(None),
        Logs({"id-db1": [(f"2026-11-28T12:0{i}:00.000000001Z", f"db1 line {i}") for i in range(30)]}),
    )
    for e in (
        event(1, "db1", "state", None, "healthy (first seen by this supervisor)"),
        event(3, "db1", "die", "exit 3", "container die"),
        event(4, "db1", "crashloop", "exit 3"),
        event(5, "db1", "state", "exit 3", "backoff -> crashloop"),
    ):
        two.events.append(e)
    server_two = TestServer(application(two, TOKEN))
    await server_two.start_server()
    records = {
        "127.0.0.1": agent("127.0.0.1", 1, ("meta0", "db0"), one_desired.spec_hash),
        "127.0.0.2": agent("127.0.0.2", server_two.port or 0, ("db1",), two_desired.spec_hash),
    }
    store = StoreView(
        agents=records,
        nodes={
            "db1": {
                "name": "db1",
                "role": "ceresdb",
                "state": "crashloop",
                "reason": "exit 3",
                "host": "127.0.0.2",
            }
        },
        slots={"db1": {"host": "127.0.0.2", "reason": "unhealthy", "since": "2026-11-28T12:04:00Z"}},
    )
    one = Agent(
        Snapshot(
            1,
            NOW,
            one_desired,
            ReloadResult(True, None, None),
            5.0,
            "127.0.0.1",
            one_obs,
            plan_of({"meta0": NodeState.HEALTHY, "db0": NodeState.HEALTHY, "db1": NodeState.REMOTE}),
            {},
            None,
            store,
            Coordination(True, "ok", "http://127.0.0.1:2379", True),
        ),
        journal.Journal(None),
        Logs({"id-db0": [("2026-11-28T12:00:00.5Z", "db0 says hello")]}),
    )
    for e in (
        event(0, None, "reloaded", None, "spec x"),
        event(2, "db0", "state", None, "healthy (first seen)"),
    ):
        one.events.append(e)
    two.snapshot = replace(two.snapshot, store=store)
    client = TestClient(TestServer(application(one, TOKEN)))
    await client.start_server()
    try:
        yield Pair(one, two, client, server_two)
    finally:
        await client.close()
        await server_two.close()


async def test_events_come_from_every_agent_in_time_order(pair: Pair) -> None:
    code, doc = await pair.get("/v1/cluster/events")
    assert code == 200 and doc["complete"] is True
    assert [(e["agent"], e["node"], e["type"]) for e in doc["events"]] == [
        ("127.0.0.1", None, "reloaded"),
        ("127.0.0.2", "db1", "state"),
        ("127.0.0.1", "db0", "state"),
        ("127.0.0.2", "db1", "die"),
        ("127.0.0.2", "db1", "crashloop"),
        ("127.0.0.2", "db1", "state"),
    ]
    assert set(doc["events"][0]) == {"at", "node", "type", "reason", "message", "agent"}
    assert doc["agents"] == [
        {"host": "127.0.0.1", "ok": True, "error": None},
        {"host": "127.0.0.2", "ok": True, "error": None},
    ]
    code, doc = await pair.get("/v1/cluster/events?node=db1&since=2026-11-28T12:03:00Z")
    assert [(e["type"], e["reason"]) for e in doc["events"]] == [
        ("die", "exit 3"),
        ("crashloop", "exit 3"),
        ("state", "exit 3"),
    ]
    code, doc = await pair.get("/v1/cluster/events?limit=2")
    assert [e["type"] for e in doc["events"]] == ["crashloop", "state"]
    code, doc = await pair.get("/v1/cluster/events?scope=local")
    assert {e["agent"] for e in doc["events"]} == {"127.0.0.1"}


async def test_events_say_which_agent_did_not_answer(pair: Pair) -> None:
    await pair.server_two.close()
    code, doc = await pair.get("/v1/cluster/events")
    assert code == 200 and doc["complete"] is False
    assert [e["agent"] for e in doc["events"]] == ["127.0.0.1", "127.0.0.1"]
    assert doc["agents"][1]["host"] == "127.0.0.2" and doc["agents"][1]["ok"] is False
    assert doc["agents"][1]["error"].startswith("does not answer (")


async def test_bad_queries_are_refused_with_a_plain_reason(pair: Pair) -> None:
    assert await pair.get("/v1/cluster/events?since=yesterday") == (
        400,
        {"error": "since must be an RFC 3339 time, like 2026-11-28T12:00:00Z", "status": 400},
    )
    assert (await pair.get("/v1/cluster/events?limit=x"))[0] == 400
    code, doc = await pair.get("/v1/cluster/events?node=db9")
    assert code == 404 and doc["known"] == ["meta0", "db0", "db1"]
    code, doc = await pair.get("/v1/nodes/db9/logs")
    assert code == 404 and doc["error"] == "unknown node 'db9'"


async def test_every_route_needs_the_token_and_it_goes_along_to_the_other_agent(pair: Pair) -> None:
    for path in ("/v1/cluster/events", "/v1/nodes/db1/logs", "/v1/nodes/db1/describe"):
        assert (await pair.get(path, token=None))[0] == 401, path
        assert (await pair.get(path, token="wrong"))[0] == 401, path
    code, doc = await pair.get("/v1/nodes/db1/logs?lines=2")  # agent two requires the token too
    assert code == 200, doc


async def test_logs_are_read_where_the_node_runs(pair: Pair) -> None:
    code, doc = await pair.get("/v1/nodes/db0/logs")
    assert code == 200 and doc == {
        "node": "db0",
        "agent": "127.0.0.1",
        "container_id": "id-db0",
        "lines": [{"at": "2026-11-28T12:00:00.5Z", "text": "db0 says hello"}],
    }
    code, doc = await pair.get("/v1/nodes/db1/logs?lines=3&since=2026-11-28T12:05:00Z")
    assert code == 200 and doc["agent"] == "127.0.0.2" and doc["container_id"] == "id-db1"
    assert [line["text"] for line in doc["lines"]] == ["db1 line 27", "db1 line 28", "db1 line 29"]
    assert pair.two.engine.asked[-1] == ("id-db1", 3, datetime(2026, 11, 28, 12, 5, tzinfo=UTC).timestamp())


async def test_logs_say_why_they_cannot_be_read(pair: Pair) -> None:
    pair.two.engine.broken = True
    code, doc = await pair.get("/v1/nodes/db1/logs")
    assert code == 503 and doc["error"].startswith("the Docker Engine on 127.0.0.2 did not give the logs: ")
    await pair.server_two.close()
    code, doc = await pair.get("/v1/nodes/db1/logs")
    assert code == 502 and doc["error"].startswith("the supervisor on 127.0.0.2 (http://127.0.0.1:")
    assert "does not answer" in doc["error"] and doc["agent"] == "127.0.0.2"
    gone = replace(
        pair.one.snapshot.store,
        agents={"127.0.0.1": pair.one.snapshot.store.agents["127.0.0.1"]},
        departed={"127.0.0.2": (pair.one.snapshot.store.agents["127.0.0.2"], "2026-11-28T12:06:00Z")},
    )
    pair.one.snapshot = replace(pair.one.snapshot, store=gone)
    code, doc = await pair.get("/v1/nodes/db1/logs")
    assert code == 503 and doc["error"] == (
        "cannot read the logs of db1: the supervisor on 127.0.0.2 is down since 2026-11-28T12:06:00Z"
    )


async def test_describe_a_crashlooping_node_of_another_agent(pair: Pair) -> None:
    code, doc = await pair.get("/v1/nodes/db1/describe")
    assert code == 200, doc
    assert (doc["node"], doc["agent"], doc["state"], doc["reason"]) == (
        "db1",
        "127.0.0.2",
        "crashloop",
        "exit 3",
    )
    assert doc["source"] == {"agent": "127.0.0.2", "complete": True, "error": None}
    assert doc["config_path"].endswith("/config/db1/ceresdb.toml") and doc["data_dir"].endswith("/data/db1")
    assert doc["container"]["id"] == "id-db1" and doc["container"]["spec_current"] is True
    assert [h["message"] for h in doc["history"]] == [
        "healthy (first seen by this supervisor)",
        "backoff -> crashloop",
    ]
    assert [(x["type"], x["reason"]) for x in doc["exits"]] == [("die", "exit 3")]
    assert [line["text"] for line in doc["logs"]["lines"]] == [f"db1 line {i}" for i in range(10, 30)]
    assert doc["slot"] == {"host": "127.0.0.2", "reason": "unhealthy", "since": "2026-11-28T12:04:00Z"}
    assert doc["paused"] == {"node": False, "all": False}
    assert set(doc) == {
        "node",
        "role",
        "host",
        "agent",
        "state",
        "reason",
        "status",
        "config_path",
        "data_dir",
        "lease",
        "slot",
        "paused",
        "container",
        "history",
        "exits",
        "events",
        "logs",
        "source",
    }


async def test_describe_a_healthy_node_here_has_no_logs(pair: Pair) -> None:
    code, doc = await pair.get("/v1/nodes/db0/describe")
    assert code == 200 and doc["state"] == "healthy" and doc["logs"] is None
    assert doc["source"]["agent"] == "127.0.0.1" and doc["history"][0]["message"] == "healthy (first seen)"


async def test_describe_a_node_whose_agent_is_gone_says_what_the_store_still_knows(pair: Pair) -> None:
    await pair.server_two.close()
    code, doc = await pair.get("/v1/nodes/db1/describe")
    assert code == 200 and doc["source"]["complete"] is False
    assert doc["source"]["error"].startswith("the supervisor on 127.0.0.2 (http://127.0.0.1:")
    assert doc["container"] is None and doc["history"] == [] and doc["logs"] is None
    assert doc["slot"]["host"] == "127.0.0.2" and doc["config_path"].endswith("/config/db1/ceresdb.toml")


async def test_pausing_several_nodes_is_all_or_nothing(pair: Pair) -> None:
    code, doc = await pair.post("/v1/pause", {"who": "cli", "nodes": ["db0", "db9", "db8"]})
    assert code == 404 and doc["unknown"] == ["db8", "db9"] and pair.one.paused == []
    assert doc["error"] == "unknown nodes 'db8', 'db9': nothing was changed"
    code, doc = await pair.post("/v1/pause", {"who": "cli", "nodes": ["db1", "db0"]})
    assert code == 200 and doc["nodes"] == ["db0", "db1"] and doc["all"] is False
    assert pair.one.paused == [(frozenset({"db0", "db1"}), True, False)]  # one change, both nodes
    assert [(e.node, e.type) for e in pair.one.events][-2:] == [("db0", "paused"), ("db1", "paused")]
    code, doc = await pair.post("/v1/resume", {"nodes": []})
    assert code == 400
    code, doc = await pair.post("/v1/resume", {})
    assert code == 200 and doc["all"] is True and pair.one.paused[-1] == (frozenset(), False, True)


def test_an_agent_url_from_what_it_publishes() -> None:
    def record(listen: str) -> AgentRecord:
        return AgentRecord("10.0.0.2", 1, "v", listen, "h", "t", "t")

    assert agent_url(record("10.0.0.2:5480")) == "http://10.0.0.2:5480"
    assert agent_url(record("0.0.0.0:5480")) == "http://10.0.0.2:5480"  # a wildcard: the agent's host
    assert agent_url(record("unix:/run/ceres-supervisor/api.sock")) is None
    assert agent_url(record("nonsense")) is None


def test_the_cluster_document_of_the_seams_is_the_api_s(tmp_path: Path) -> None:
    """surfaces/seams builds /v1/cluster for the metrics and the routes: the same document as the
    API's own (a drift here would show other nodes on /metrics than on /v1/cluster)."""
    desired = desired_cluster(tmp_path, TWO_HOSTS, is_local=lambda host: host == "127.0.0.1")
    snap = Snapshot(
        1,
        NOW,
        desired,
        ReloadResult(True, None, None),
        5.0,
        "127.0.0.1",
        healthy_observation(desired),
        plan_of({"meta0": NodeState.HEALTHY, "db0": NodeState.HEALTHY, "db1": NodeState.REMOTE}),
        {},
        None,
        StoreView(agents={"127.0.0.1": agent("127.0.0.1", 1, ("meta0", "db0"), desired.spec_hash)}),
        Coordination(True, "ok", "http://127.0.0.1:2379", True, 42, "http://127.0.0.2:2379"),
    )

    @dataclass
    class Holder:
        snapshot: Snapshot

    assert seams.cluster(snap) == api.Api(Holder(snap), None).v1_cluster_document()  # type: ignore[arg-type]
