"""The status API in-process (aiohttp's TestServer and TestClient) over a small daemon that
implements `surfaces.api.Daemon` (tests/unit/scenes.py): the token on every route, hostile
requests, and what each route answers. The operator's routes run the real operations code."""

from __future__ import annotations

import asyncio
import json
import socket
import stat
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ceres_supervisor.decisions.planning import NodeState, NodeView
from ceres_supervisor.surfaces import api
from ceres_supervisor.surfaces.snapshot import Event, ReloadResult

from .scenes import META3, FakeDaemon, agent_record, build, coordination, healthy, snapshot

TOKEN = "s3cret-token"
ROUTES = [
    ("GET", "/"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/v1/status"),
    ("GET", "/v1/cluster"),
    ("GET", "/v1/events"),
    ("POST", "/v1/reload"),
    ("GET", "/metrics"),
    ("POST", "/v1/pause"),
    ("POST", "/v1/resume"),
    ("POST", "/v1/nodes/{name}/pause"),
    ("POST", "/v1/nodes/{name}/resume"),
    ("POST", "/v1/nodes/{name}/restart"),
    ("POST", "/v1/rolling-restart"),
    ("GET", "/v1/operations/{id}"),
    ("POST", "/v1/operations/{id}/cancel"),
    ("GET", "/v1/cluster/events"),
    ("GET", "/v1/nodes/{name}/logs"),
    ("GET", "/v1/nodes/{name}/describe"),
    ("GET", "/v1/upgrade"),
    ("POST", "/v1/nodes/{name}/upgrade"),
]
"""Every route of the application (checked against its router below), as a template."""


def concrete(path: str) -> str:
    return path.replace("{name}", "db0").replace("{id}", "op-1-1")


class Api:
    """One API in-process over a FakeDaemon."""

    def __init__(self, daemon: FakeDaemon, client: TestClient[Any, Any], app: web.Application) -> None:
        self.daemon = daemon
        self.client = client
        self.app = app

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
        async with self.client.request(method, path, allow_redirects=False, **kwargs) as response:
            raw = await response.read()
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode()
            return response.status, body, response


@pytest.fixture
async def apis(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Makes an API over a FakeDaemon of three meta members and three CeresDB nodes, all healthy."""
    made: list[Api] = []

    async def make(token: str | None = None, text: str = META3, local: Any = True, **snap: Any) -> Api:
        desired = build(tmp_path, text, local)
        obs, plan = healthy(desired)
        daemon = FakeDaemon(
            snapshot(desired, obs, plan, loop_at=time.monotonic(), **snap), tmp_path / "state"
        )
        app = api.Api(daemon, token).application()
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        made.append(Api(daemon, client, app))
        return made[-1]

    yield make
    for one in made:
        await one.daemon.close()
        await one.client.close()


def test_the_route_table_is_every_route_of_the_application() -> None:
    """A route added to the application without a row here would go untested for its token."""
    app = api.Api(object(), TOKEN).application()  # type: ignore[arg-type]
    served = {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    assert served == set(ROUTES)


# --- the token ------------------------------------------------------------------------------------


REFUSED = {
    "none": {},
    "wrong-bearer": {"headers": {"Authorization": "Bearer wrong"}},
    "basic": {"headers": {"Authorization": f"Basic {TOKEN}"}},
    "longer": {"headers": {"Authorization": f"Bearer {TOKEN}x"}},
    "empty-bearer": {"headers": {"Authorization": "Bearer "}},
    "wrong-cookie": {"cookies": {api.COOKIE: "wrong"}},
    "query": {"params": {"token": TOKEN}},  # only the page takes it from the address (to set the cookie)
}


@pytest.mark.parametrize("credentials", list(REFUSED))
async def test_every_route_but_healthz_refuses_a_request_without_the_token(
    apis: Callable[..., Any], credentials: str
) -> None:
    one = await apis(TOKEN)
    for method, path in ROUTES:
        if path == "/healthz" or (path == "/" and credentials == "query"):
            continue  # the page's own way in: test_the_page_takes_the_token_once_from_the_address
        status, body, response = await one.call(method, concrete(path), **REFUSED[credentials])
        assert status == 401, (method, path, body)
        assert body == {"error": "unauthorized", "status": 401}
        assert response.headers["WWW-Authenticate"] == "Bearer"
    # Refused means nothing happened: no pause, no operation, no reload asked.
    assert not one.daemon.store_sync.pauses.path.exists()
    assert not one.daemon.operations.kept and not one.daemon.reloads


@pytest.mark.parametrize(
    "credentials",
    [
        {"headers": {"Authorization": f"Bearer {TOKEN}"}},
        {"headers": {"Authorization": f"bearer  {TOKEN} "}},
        {"cookies": {api.COOKIE: TOKEN}},
        None,
    ],
    ids=["bearer", "lowercase-spaced", "cookie", "loopback-without-token"],
)
async def test_every_route_answers_with_the_token_or_on_a_loopback_listener(
    apis: Callable[..., Any], credentials: dict[str, Any] | None
) -> None:
    one = await apis(TOKEN if credentials is not None else None)
    one.daemon.reload_answer = ReloadResult(True, None, None)
    answered = {}
    for method, path in ROUTES:
        status, body, _ = await one.call(method, concrete(path), **(credentials or {}))
        assert status != 401, (method, path, body)
        answered[path] = status
    assert answered == {
        "/": 200,
        "/healthz": 200,
        "/readyz": 200,
        "/v1/status": 200,
        "/v1/cluster": 503,  # the store: not connected yet
        "/v1/events": 200,
        "/v1/reload": 200,
        "/metrics": 200,
        "/v1/pause": 200,
        "/v1/resume": 200,
        "/v1/nodes/{name}/pause": 200,
        "/v1/nodes/{name}/resume": 200,
        "/v1/nodes/{name}/restart": 202,
        "/v1/rolling-restart": 202,
        "/v1/operations/{id}": 404,
        "/v1/operations/{id}/cancel": 404,
        "/v1/cluster/events": 200,
        "/v1/nodes/{name}/logs": 200,
        "/v1/nodes/{name}/describe": 200,
        "/v1/upgrade": 200,
        "/v1/nodes/{name}/upgrade": 400,  # the body must name the file's spec_hash
    }


async def test_healthz_answers_without_the_token(apis: Callable[..., Any]) -> None:
    one = await apis(TOKEN)
    status, body, _ = await one.call("GET", "/healthz")
    assert status == 200 and body["ok"] is True


async def test_the_page_takes_the_token_once_from_the_address(apis: Callable[..., Any]) -> None:
    """`/?token=...` sets an HttpOnly cookie and sends the browser back to `/` without the token."""
    one = await apis(TOKEN)
    status, _body, response = await one.call("GET", "/", params={"token": TOKEN})
    assert status == 303 and response.headers["Location"] == "/"
    cookie = response.cookies[api.COOKIE]
    assert cookie.value == TOKEN and cookie["httponly"] and cookie["samesite"] == "Strict"
    one.client.session.cookie_jar.clear()  # a browser without the cookie
    status, _body, _ = await one.call("GET", "/", params={"token": "wrong"})
    assert status == 401
    status, _body, response = await one.call("GET", "/", cookies={api.COOKIE: TOKEN})
    assert status == 200 and response.content_type == "text/html"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]


# --- hostile requests -------------------------------------------------------------------------------


async def test_an_unknown_route_and_a_wrong_method_are_json_errors(apis: Callable[..., Any]) -> None:
    one = await apis(None)
    assert (await one.call("GET", "/v2/status"))[:2] == (404, {"error": "Not Found", "status": 404})
    assert (await one.call("DELETE", "/v1/status"))[:2] == (
        405,
        {"error": "Method Not Allowed", "status": 405},
    )
    assert (await one.call("GET", "/v1/reload"))[:2] == (405, {"error": "Method Not Allowed", "status": 405})


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/v1/nodes/db0/pause", b"{not json", 400, "the body is not JSON"),
        ("/v1/nodes/db0/pause", b"\xff\xfe", 400, "the body is not JSON"),
        ("/v1/nodes/db0/pause", b"[1, 2]", 400, "the body must be a JSON object"),
        ("/v1/nodes/db0/pause", b'"cli"', 400, "the body must be a JSON object"),
        ("/v1/nodes/db0/pause", b'{"who": "root"}', 400, "who is api or cli"),
        ("/v1/nodes/db0/pause", b'{"who": ["cli"]}', 400, "who is api or cli"),
        ("/v1/nodes/db0/pause", b'{"via": 7}', 400, "via is a short printable text"),
        ("/v1/nodes/db0/pause", b'{"via": ""}', 400, "via is a short printable text"),
        (
            "/v1/nodes/db0/pause",
            json.dumps({"via": "x" * 201}).encode(),
            400,
            "via is a short printable text",
        ),
        ("/v1/nodes/db0/pause", b'{"via": "a\\nb"}', 400, "via is a short printable text"),
        ("/v1/rolling-restart", b'{"role": "leader"}', 400, "role is meta or ceresdb"),
        ("/v1/pause", b"x" * (api.MAX_BODY + 1), 413, "Request Entity Too Large"),
        ("/v1/reload", b"x" * (api.MAX_BODY + 1), 413, "Request Entity Too Large"),
    ],
)
async def test_a_hostile_body_is_refused_and_changes_nothing(
    apis: Callable[..., Any], path: str, body: bytes, status: int, error: str
) -> None:
    one = await apis(None)
    got, answer, _ = await one.call("POST", path, data=body, headers={"Content-Type": "application/json"})
    assert (got, answer) == (status, {"error": error, "status": status})
    assert one.daemon.store_sync.pauses.current.nodes == frozenset()
    assert not one.daemon.operations.kept and not one.daemon.reloads


@pytest.mark.parametrize("name", ["db9", "db0%2F..%2Fmeta0", "%00", "DB0", "db0%20", "%F0%9F%90%8D"])
@pytest.mark.parametrize("verb", ["pause", "resume", "restart"])
async def test_an_unknown_node_is_404_with_the_known_names(
    apis: Callable[..., Any], name: str, verb: str
) -> None:
    one = await apis(None)
    status, body, _ = await one.call("POST", f"/v1/nodes/{name}/{verb}")
    assert status == 404
    assert body["status"] == 404 and body["error"].startswith("unknown node ")
    assert body["known"] == ["meta0", "meta1", "meta2", "db0", "db1", "db2"]
    assert not one.daemon.operations.kept and one.daemon.store_sync.pauses.current.nodes == frozenset()


async def test_a_handler_that_fails_answers_500_json_and_the_api_keeps_serving(
    apis: Callable[..., Any],
) -> None:
    one = await apis(None)
    good = one.daemon.snapshot
    one.daemon.snapshot = replace(good, records=None)  # a broken snapshot
    assert (await one.call("GET", "/v1/status"))[:2] == (500, {"error": "internal error", "status": 500})
    one.daemon.snapshot = good
    assert (await one.call("GET", "/v1/status"))[0] == 200


async def test_a_page_that_cannot_be_built_is_a_500_page_not_a_traceback(apis: Callable[..., Any]) -> None:
    one = await apis(None)
    one.daemon.snapshot = replace(one.daemon.snapshot, store=None)
    status, body, response = await one.call("GET", "/")
    assert status == 500 and response.content_type == "text/html"
    assert "the cluster view could not be built" in body and "Traceback" not in body


# --- what each route answers ------------------------------------------------------------------------


async def test_healthz_follows_the_age_of_the_last_cycle(apis: Callable[..., Any]) -> None:
    one = await apis(None)
    snap = one.daemon.snapshot
    limit = 3 * snap.probe_interval_s + 10
    for loop_at, status, ok in [
        (None, 503, False),
        (time.monotonic(), 200, True),
        (time.monotonic() - limit - 5, 503, False),
    ]:
        one.daemon.snapshot = replace(snap, loop_at=loop_at)
        got, body, _ = await one.call("GET", "/healthz")
        assert (got, body["ok"]) == (status, ok)
        assert (body["last_cycle_age_s"] is None) == (loop_at is None)


async def test_readyz_is_200_only_while_the_cluster_is_healthy(apis: Callable[..., Any]) -> None:
    one = await apis(None)
    assert (await one.call("GET", "/readyz"))[:2] == (200, {"ready": True, "state": "healthy"})
    one.daemon.snapshot = replace(one.daemon.snapshot, engine_error="docker gone")
    assert (await one.call("GET", "/readyz"))[:2] == (503, {"ready": False, "state": "unknown"})
    one.daemon.snapshot = replace(one.daemon.snapshot, engine_error=None, plan=None)
    assert (await one.call("GET", "/readyz"))[:2] == (503, {"ready": False, "state": "starting"})


async def test_status_is_built_once_per_snapshot(apis: Callable[..., Any]) -> None:
    one = await apis(None)
    _, first, _ = await one.call("GET", "/v1/status")
    assert first["cluster"]["state"] == "healthy" and [n["name"] for n in first["nodes"]][:1] == ["meta0"]
    cached = api.Api(one.daemon, None)
    assert cached.status_body() is cached.status_body()
    one.daemon.snapshot = replace(
        one.daemon.snapshot, reload=ReloadResult(False, "bad file", datetime(2026, 1, 1, tzinfo=UTC))
    )
    _, second, _ = await one.call("GET", "/v1/status")
    assert second["reload"] == {"ok": False, "error": "bad file", "at": "2026-01-01T00:00:00.000Z"}


async def test_cluster_is_503_with_the_local_view_while_the_store_is_away(apis: Callable[..., Any]) -> None:
    one = await apis(None)
    status, body, _ = await one.call("GET", "/v1/cluster")
    assert status == 503  # the snapshot's coordination: "not connected yet"
    assert body["coordination"]["ok"] is False and body["coordination"]["age_s"] is None
    assert body["cluster"]["state"] == "unknown"
    assert {n["name"]: n["state"] for n in body["nodes"]}["db0"] == "healthy"  # this agent's own view
    assert body["meta"]["leader"] == "meta0"
    from .scenes import coordination  # noqa: PLC0415

    one.daemon.snapshot = replace(
        one.daemon.snapshot, coordination=replace(coordination(), confirmed_at=time.monotonic())
    )
    status, body, _ = await one.call("GET", "/v1/cluster")
    assert status == 200 and body["coordination"]["ok"] is True and body["coordination"]["age_s"] >= 0
    assert body["cluster"]["state"] == "healthy"


async def test_events_are_the_newest_last_and_limited(apis: Callable[..., Any]) -> None:
    one = await apis(None)
    at = datetime(2026, 11, 26, 4, 0, tzinfo=UTC)
    for i in range(5):
        one.daemon.events.append(Event(at, f"db{i}", "die", "exit 137", f"message {i}"))
    _, every, _ = await one.call("GET", "/v1/events")
    assert [e["message"] for e in every] == [f"message {i}" for i in range(5)]
    assert every[0] == {
        "at": "2026-11-26T04:00:00.000Z",
        "node": "db0",
        "type": "die",
        "reason": "exit 137",
        "message": "message 0",
    }
    for limit, count in [("2", 2), ("0", 0), ("-3", 0), ("1000", 5)]:
        _, some, _ = await one.call("GET", "/v1/events", params={"limit": limit})
        assert [e["message"] for e in some] == [f"message {i}" for i in range(5 - count, 5)], limit
    assert (await one.call("GET", "/v1/events", params={"limit": "many"}))[:2] == (
        400,
        {"error": "limit must be an integer", "status": 400},
    )


@pytest.mark.parametrize(
    ("result", "status"),
    [
        (ReloadResult(True, None, datetime(2026, 1, 1, tzinfo=UTC)), 200),
        (ReloadResult(False, "cluster.name: cannot change", datetime(2026, 1, 1, tzinfo=UTC)), 422),
    ],
)
async def test_reload_answers_what_the_daemon_did(
    apis: Callable[..., Any], result: ReloadResult, status: int
) -> None:
    one = await apis(None)
    answer = asyncio.ensure_future(one.call("POST", "/v1/reload"))
    async with asyncio.timeout(10):
        await one.daemon.reload_asked.wait()
    one.daemon.reloads[0].set_result(result)
    got, body, _ = await answer
    assert (got, body) == (status, {"ok": result.ok, "error": result.error, "at": "2026-01-01T00:00:00.000Z"})


async def test_a_reload_still_running_is_202(
    apis: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "RELOAD_WAIT_S", 0.05)  # how long the route waits (the reload never ends here)
    one = await apis(None)
    got, body, _ = await one.call("POST", "/v1/reload")
    assert (got, body) == (202, {"ok": None, "error": "reload still running", "at": None})
    assert len(one.daemon.reloads) == 1 and not one.daemon.reloads[0].done()


async def test_metrics_speak_prometheus_text_and_openmetrics(apis: Callable[..., Any]) -> None:
    one = await apis(None)
    status, body, response = await one.call("GET", "/metrics")
    assert status == 200 and response.headers["Content-Type"].startswith("text/plain")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert (
        'ceres_supervisor_node_state{cluster="defaultCluster",host="127.0.0.1",node="db0",role="ceresdb",state="healthy"} 1.0'
        in body
    )
    _, body, response = await one.call("GET", "/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.headers["Content-Type"].startswith("application/openmetrics-text") and body.endswith(
        "# EOF\n"
    )


async def test_the_page_shows_the_cluster_and_the_last_events(apis: Callable[..., Any]) -> None:
    one = await apis(None)
    one.daemon.events.append(Event(datetime.now(UTC), "db1", "die", "exit 137", "container die <b>"))
    status, body, _ = await one.call("GET", "/")
    assert status == 200 and "db1" in body and "container die &lt;b&gt;" in body
    assert "container die <b>" not in body


# --- the operator's routes ----------------------------------------------------------------------------


async def test_a_pause_is_in_paused_json_at_once_and_holds_on_this_machine_while_the_store_is_away(
    apis: Callable[..., Any],
) -> None:
    one = await apis(None)
    status, body, _ = await one.call("POST", "/v1/nodes/db0/pause", json={"who": "cli"})
    assert status == 200
    assert body == {
        "ok": True,
        "nodes": ["db0"],
        "all": False,
        "paused": True,
        "holds_on": "this machine now; the store when it answers again",
        "who": "cli",
    }
    book = json.loads((one.daemon.store_sync.pauses.path).read_text())
    assert book["nodes"] == ["db0"] and book["pending"] == [[["db0"], True, False]]
    event = one.daemon.events[-1]
    assert (event.node, event.type, event.reason) == ("db0", "paused", "cli")
    status, body, _ = await one.call("POST", "/v1/nodes/db0/resume")
    assert status == 200 and body["resumed"] is True and body["who"] == "api"
    assert json.loads(one.daemon.store_sync.pauses.path.read_text())["nodes"] == []


async def test_pause_all_and_resume_all_name_the_whole_cluster(apis: Callable[..., Any]) -> None:
    one = await apis(None)
    status, body, _ = await one.call("POST", "/v1/pause", json={"who": "cli", "via": "op-9 on 127.0.0.2"})
    assert (
        status == 200
        and body["all"] is True
        and body["nodes"] == []
        and body["who"] == "cli via op-9 on 127.0.0.2"
    )
    assert one.daemon.store_sync.pauses.current.all is True
    assert one.daemon.events[-1].node is None and "the whole cluster paused" in one.daemon.events[-1].message
    status, body, _ = await one.call("POST", "/v1/resume")
    assert status == 200 and one.daemon.store_sync.pauses.current.all is False


async def test_a_planned_restart_is_202_and_followed_at_its_operation(apis: Callable[..., Any]) -> None:
    one = await apis(None)
    status, body, _ = await one.call("POST", "/v1/nodes/db1/restart", json={"who": "cli"})
    assert status == 202 and set(body) == {"operation"}
    op_id = body["operation"]
    assert one.daemon.operations.requested == {"db1": op_id}  # the planner is asked for the stop
    status, doc, _ = await one.call("GET", f"/v1/operations/{op_id}")
    assert status == 200
    assert (doc["id"], doc["kind"], doc["who"], doc["nodes"], doc["current"], doc["outcome"]) == (
        op_id,
        "restart",
        "cli",
        ["db1"],
        "db1",
        None,
    )
    status, again, _ = await one.call("POST", "/v1/nodes/db1/restart")
    assert (status, again["operation"]) == (409, op_id)
    assert again["error"] == "db1 is already being restarted"
    status, cancelled, _ = await one.call("POST", f"/v1/operations/{op_id}/cancel")
    assert (
        status == 202
        and cancelled["steps"][-1]["text"] == "stop asked: the operation ends after the current node"
    )
    assert (await one.call("GET", "/v1/operations/op-0-0"))[:2] == (
        404,
        {"error": "no such operation", "status": 404},
    )


@pytest.mark.parametrize(
    ("state", "why"),
    [
        (NodeState.PAUSED, "db1 is paused: resume it first"),
        (NodeState.PENDING, "db1 is pending: the supervisor starts it itself"),
        (NodeState.BACKOFF, "db1 is backoff: the supervisor starts it itself"),
        (NodeState.CRASHLOOP, "db1 is crashloop: the supervisor starts it itself"),
        (NodeState.STOPPED, "db1 is stopped: the supervisor starts it itself"),
        (NodeState.BLOCKED, "db1 is blocked: the supervisor starts it itself"),
        (None, "db1 is not observed yet: the supervisor starts it itself"),
    ],
)
async def test_a_restart_of_a_node_that_does_not_run_is_refused(
    apis: Callable[..., Any], state: NodeState | None, why: str
) -> None:
    one = await apis(None)
    plan = one.daemon.snapshot.plan
    views = dict(plan.views)
    if state is None:
        views.pop("db1")
    else:
        views["db1"] = NodeView(state, "as the test says")
    one.daemon.snapshot = replace(one.daemon.snapshot, plan=replace(plan, views=views))
    status, body, _ = await one.call("POST", "/v1/nodes/db1/restart")
    assert (status, body) == (409, {"error": why, "status": 409, "operation": None})
    assert not one.daemon.operations.kept


async def test_a_restart_of_another_machine_s_node_is_taken_whatever_this_agent_sees(
    apis: Callable[..., Any], tmp_path: Path
) -> None:
    desired = build(tmp_path / "remote", META3, local=lambda host: False)
    one = await apis(None)
    one.daemon.snapshot = snapshot(desired)  # not observed here: its own agent restarts it
    status, body, _ = await one.call("POST", "/v1/nodes/db1/restart")
    assert status == 202 and body["operation"]


async def test_a_rolling_restart_takes_meta_followers_then_the_leader_then_ceresdb(
    apis: Callable[..., Any],
) -> None:
    one = await apis(None)
    status, body, _ = await one.call("POST", "/v1/rolling-restart", json={"who": "cli"})
    assert status == 202
    assert body["nodes"] == ["meta1", "meta2", "meta0", "db0", "db1", "db2"]  # meta0 leads
    assert one.daemon.claims == [{"kind": "rolling-restart", "id": body["operation"], "who": "cli"}]
    status, again, _ = await one.call("POST", "/v1/rolling-restart")
    assert (status, again["operation"]) == (409, body["operation"])
    assert again["error"] == f"rolling restart {body['operation']} is still running"


@pytest.mark.parametrize(
    ("role", "nodes"), [("meta", ["meta1", "meta2", "meta0"]), ("ceresdb", ["db0", "db1", "db2"])]
)
async def test_a_rolling_restart_of_one_role(apis: Callable[..., Any], role: str, nodes: list[str]) -> None:
    one = await apis(None)
    status, body, _ = await one.call("POST", "/v1/rolling-restart", json={"role": role})
    assert status == 202 and body["nodes"] == nodes


async def test_a_rolling_restart_is_refused_while_another_machine_runs_one(apis: Callable[..., Any]) -> None:
    one = await apis(None)
    one.daemon.holder = "127.0.0.2 (rolling-restart op-7, asked by cli)"
    status, body, _ = await one.call("POST", "/v1/rolling-restart")
    assert (status, body["operation"]) == (409, None)
    assert body["error"] == (
        "a rolling operation already runs on 127.0.0.2 (rolling-restart op-7, asked by cli): one at a time cluster-wide"
    )
    assert not one.daemon.operations.kept


async def test_metrics_count_restarts_by_kind_and_the_last_good_backup(apis: Callable[..., Any]) -> None:
    """And a host of the file whose supervisor left the store is 0 in agent_up."""
    text = META3.replace('name = "db2"\nhost = "127.0.0.1"', 'name = "db2"\nhost = "127.0.0.2"')
    one = await apis(None, text, lambda host: host == "127.0.0.1", coordination=coordination())
    metrics = one.daemon.metrics
    metrics.count_restart("db0", "died")
    metrics.count_restart("db0", "died")
    metrics.count_restart("db1", "planned")
    assert metrics.restarts_by_reason() == {("db0", "died"): 2, ("db1", "planned"): 1}
    metrics.backup_succeeded("defaultCluster", "127.0.0.1", 1_790_000_000.0)
    metrics.backup_succeeded("defaultCluster", "127.0.0.1", 1_790_000_060.0)
    one.daemon.snapshot = replace(
        one.daemon.snapshot,
        store=replace(
            one.daemon.snapshot.store,
            agents={},
            departed={"127.0.0.2": (agent_record("127.0.0.2", ("db2",)), "t")},
        ),
    )
    _, body, _ = await one.call("GET", "/metrics")
    assert (
        'ceres_supervisor_restarts_total{cluster="defaultCluster",host="127.0.0.1",node="db0",reason="died"} 2.0'
        in body
    )
    assert (
        'ceres_supervisor_last_backup_success_timestamp_seconds{cluster="defaultCluster",host="127.0.0.1"} 1.79000006e+09'
        in body
    )
    assert 'ceres_supervisor_agent_up{cluster="defaultCluster",host="127.0.0.1"} 1.0' in body
    assert 'ceres_supervisor_agent_up{cluster="defaultCluster",host="127.0.0.2"} 0.0' in body


# --- the server: where it listens -------------------------------------------------------------------


def served(tmp_path: Path, listen: str, token: bool = False) -> FakeDaemon:
    text = META3.replace(
        "[cluster]\n",
        f'[supervisor]\nlisten = "{listen}"\n'
        + (f'token_file = "{tmp_path}/token"\n' if token else "")
        + "\n[cluster]\n",
        1,
    )
    (tmp_path / "token").write_text(f"  {TOKEN}\n")
    desired = build(tmp_path, text)
    obs, plan = healthy(desired)
    return FakeDaemon(snapshot(desired, obs, plan, loop_at=time.monotonic()), tmp_path / "state")


async def get_unix(path: str, route: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path)) as session,
        session.get(f"http://localhost{route}", headers=headers) as response,
    ):
        return response.status


async def test_the_server_listens_on_a_unix_socket_of_mode_0660_and_takes_over_a_stale_one(
    tmp_path: Path,
) -> None:
    sock = tmp_path / "run" / "api.sock"
    daemon = served(tmp_path, f"unix:{sock}", token=True)
    first = api.ApiServer(daemon)
    await first.start()
    try:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660
        assert daemon.operations.token == TOKEN  # other machines' APIs take the same token
        assert await get_unix(str(sock), "/v1/status") == 401
        assert await get_unix(str(sock), "/v1/status", TOKEN) == 200
        second = api.ApiServer(daemon)
        with pytest.raises(OSError, match="another process is listening on"):
            await second.start()
    finally:
        await first.close()
    assert sock.exists()  # aiohttp leaves the socket file behind: the next start claims it
    again = api.ApiServer(daemon)
    await again.start()
    try:
        assert await get_unix(str(sock), "/healthz") == 200
    finally:
        await again.close()
        await again.close()  # closing twice is harmless


async def test_a_file_that_is_not_a_socket_is_never_removed(tmp_path: Path) -> None:
    precious = tmp_path / "api.sock"
    precious.write_text("data")
    server = api.ApiServer(served(tmp_path, f"unix:{precious}"))
    with pytest.raises(OSError, match="exists and is not a socket"):
        await server.start()
    assert precious.read_text() == "data"


async def test_an_empty_token_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        api.read_token(str(tmp_path / "empty"))
    (tmp_path / "token").write_text(f" {TOKEN} \n")
    assert api.read_token(str(tmp_path / "token")) == TOKEN


async def test_the_server_on_tcp_serves_until_cancelled_and_then_closes(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = api.ApiServer(served(tmp_path, f"127.0.0.1:{port}"))
    await server.start()
    serving = asyncio.ensure_future(server.serve_forever())
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/healthz") as response,
    ):
        assert response.status == 200
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving
    assert server.runner is None
