"""Operator controls: pause and resume, planned and rolling restarts, and their routes.

Real daemon, real containers; stops and starts judged from Docker's own events."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import docker
from prometheus_client.parser import text_string_to_metric_families

from ceres_supervisor.cli import commands
from testkit.dockerevents import DockerEvents
from testkit.helpers import free_ports
from testkit.standins import emulator_hook, kill_main_process

from .conftest import Cluster, eventually


async def call(
    cluster: Cluster,
    method: str,
    path: str,
    body: object = None,
    token: str | None = None,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, cluster.api_url + path, json=body if raw is None else None, data=raw, headers=headers
        ) as response,
    ):
        return response.status, await response.json(content_type=None)


async def follow(cluster: Cluster, op_id: str, timeout_s: float) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        _code, doc = await call(cluster, "GET", f"/v1/operations/{op_id}")
        return doc if doc.get("outcome") is not None else None

    return await eventually(done, timeout_s, f"operation {op_id} done", interval_s=0.2)


async def test_a_paused_node_stopped_by_hand_stays_stopped_across_a_supervisor_restart(
    make_cluster: Callable[..., Cluster], docker_client: docker.DockerClient
) -> None:
    cluster = make_cluster()
    await cluster.start()
    await cluster.healthy(90)
    code, body = await call(cluster, "POST", "/v1/nodes/db1/pause", {"who": "cli"})
    assert code == 200 and body["paused"] is True
    await eventually(lambda: cluster.state("db1") == "paused", 10, "db1 paused")
    db1 = await cluster.container("db1")
    with DockerEvents(docker_client, cluster.name) as events:
        await asyncio.to_thread(db1.stop)  # the operator, by hand
        await eventually(
            lambda: "container stopped" in (cluster.view("db1").reason or ""),
            10,  # type: ignore[union-attr]
            "the paused state saying the container is stopped",
        )
        await cluster.cycles(3)  # three chances to start it
        assert events.of("db1", ("start",)) == []
        await cluster.stop()
        await cluster.start()  # the supervisor restarted meanwhile
        await eventually(lambda: cluster.state("db1") == "paused", 10, "still paused after the restart")
        await cluster.cycles(3)  # the new daemon must not start it either
        assert events.of("db1", ("start",)) == []
        assert (cluster.root / "state" / "paused.json").exists()
        code, body = await call(cluster, "POST", "/v1/nodes/db1/resume")
        assert code == 200
        await cluster.healthy(90)
        assert len(events.of("db1", ("start",))) == 1
    assert cluster.record("db1").failures == 0  # started without counting a failure
    kinds = [(e.node, e.type, e.reason) for e in cluster.supervisor.events]  # type: ignore[union-attr]
    assert ("db1", "resumed", "api") in kinds


async def test_a_paused_cluster_restarts_nothing_until_resumed(
    make_cluster: Callable[..., Cluster], docker_client: docker.DockerClient
) -> None:
    cluster = make_cluster()
    await cluster.start()
    await cluster.healthy(90)
    with contextlib.redirect_stdout(io.StringIO()):
        assert await asyncio.to_thread(commands.main, ["pause", "--all", "--url", cluster.api_url]) == 0
    await eventually(
        lambda: all(cluster.state(n) == "paused" for n in ("meta0", "db0", "db1")), 10, "all paused"
    )
    with DockerEvents(docker_client, cluster.name) as events:
        kill_main_process(await cluster.container("db0"))
        await eventually(lambda: events.of("db0", ("die",)), 10, "db0 died")
        await cluster.cycles(3)  # three chances to restart it
        assert events.of("db0", ("start",)) == []
        with contextlib.redirect_stdout(io.StringIO()):
            assert await asyncio.to_thread(commands.main, ["resume", "--all", "--url", cluster.api_url]) == 0
        await cluster.healthy(90)
        assert len(events.of("db0", ("start",))) == 1


def restarts(text: str, node: str, reason: str) -> float:
    for family in text_string_to_metric_families(text):
        if family.name == "ceres_supervisor_restarts":
            return sum(
                s.value
                for s in family.samples
                if s.name.endswith("_total")
                and s.labels.get("node") == node
                and s.labels.get("reason") == reason
            )
    return 0.0


async def flushes(cluster: Cluster, node: str) -> list[str]:
    container = await cluster.container(node)
    result = await asyncio.to_thread(
        container.exec_run, ["sh", "-c", "cat /run/ceres-emulator/flushes 2>/dev/null"]
    )
    return result.output.decode().split()


async def test_a_planned_restart_flushes_stops_once_starts_once_and_waits_for_the_shards(
    make_cluster: Callable[..., Cluster], docker_client: docker.DockerClient
) -> None:
    cluster = make_cluster(version="1.2.7")
    await cluster.start()
    await cluster.healthy(120)
    before = (await cluster.container("db0")).attrs["State"]["StartedAt"]
    with DockerEvents(docker_client, cluster.name) as events:
        with contextlib.redirect_stdout(io.StringIO()) as out:
            code = await asyncio.to_thread(commands.main, ["restart", "db0", "--url", cluster.api_url])
        assert code == 0, out.getvalue()
        kills, starts = events.chosen_stops("db0"), events.of("db0", ("start",))
    steps = out.getvalue()
    assert "flush_memtable" in steps and "healthy with its shards" in steps, steps
    assert len(kills) == 1 and len(starts) == 1 and kills[0].at < starts[0].at
    assert await flushes(cluster, "db0"), "no flush recorded by the stand-in before the stop"
    assert cluster.view("db0").available  # type: ignore[union-attr]
    assert (await cluster.container("db0")).attrs["State"]["StartedAt"] != before
    async with aiohttp.ClientSession() as session, session.get(cluster.api_url + "/metrics") as response:
        text = await response.text()
    assert restarts(text, "db0", "planned") == 1
    assert cluster.record("db0").failures == 0
    kinds = [(e.node, e.type) for e in cluster.supervisor.events]  # type: ignore[union-attr]
    assert ("db0", "planned_restart") in kinds and ("db0", "operation_done") in kinds


async def test_a_rolling_restart_goes_followers_leader_ceresdb_one_at_a_time(
    make_cluster: Callable[..., Cluster], docker_client: docker.DockerClient
) -> None:
    cluster = make_cluster(meta=3, db=3, version="2.0.0")
    await cluster.start()
    await cluster.healthy(120)
    leader = cluster.supervisor.leader()  # type: ignore[union-attr]
    assert leader is not None
    before = {
        c.labels["io.ceres-supervisor.node"]: c.attrs["State"]["StartedAt"]
        for c in await cluster.containers()
    }
    with DockerEvents(docker_client, cluster.name) as events:
        code, body = await call(cluster, "POST", "/v1/rolling-restart", {"who": "api"})
        assert code == 202
        doc = await follow(cluster, body["operation"], 600)
        assert doc["outcome"] == "ok", json.dumps(doc, indent=1)
        order = [e.node for e in events.chosen_stops()]
        most, intervals = events.most_down_at_once()
    followers = sorted(m for m in ("meta0", "meta1", "meta2") if m != leader)
    assert sorted(order[:2]) == followers and order[2] == leader and order[3:] == ["db0", "db1", "db2"], order
    assert most == 1, intervals
    after = {
        c.labels["io.ceres-supervisor.node"]: c.attrs["State"]["StartedAt"]
        for c in await cluster.containers()
    }
    assert all(after[n] != before[n] for n in before) and len(order) == 6


async def test_a_planned_restart_waits_for_the_budget_and_says_so(
    make_cluster: Callable[..., Cluster], docker_client: docker.DockerClient
) -> None:
    cluster = make_cluster(db=2, supervisor={"backoff_initial": "8s", "backoff_max": "8s"})
    await cluster.start()
    await cluster.healthy(90)
    db1 = await cluster.container("db1")
    await asyncio.to_thread(db1.exec_run, ["ceres-emulator-fault", "exit", "3"])  # db1 down, in backoff
    await eventually(lambda: cluster.state("db1") in ("backoff", "crashloop"), 20, "db1 down")
    with DockerEvents(docker_client, cluster.name) as events:
        code, body = await call(cluster, "POST", "/v1/nodes/db0/restart")
        assert code == 202
        op_id = body["operation"]

        async def waiting() -> bool:
            _c, doc = await call(cluster, "GET", f"/v1/operations/{op_id}")
            return any("waiting for disruption budget: db1" in s["text"] for s in doc["steps"])

        await eventually(waiting, 20, "the operation saying it waits for the budget")
        assert events.chosen_stops("db0") == []
        code, body = await call(cluster, "POST", "/v1/nodes/db0/restart")
        assert (code, body["operation"]) == (409, op_id)  # already being restarted
        container = await cluster.container("db1")  # clear its fault; it is stopped, so no exec
        await asyncio.to_thread(container.put_archive, "/run/ceres-emulator", _empty_fault())
        doc = await follow(cluster, op_id, 240)
        assert doc["outcome"] == "ok", json.dumps(doc, indent=1)
        assert len(events.chosen_stops("db0")) == 1


def _empty_fault() -> bytes:
    """A tar holding an empty /run/ceres-emulator/fault: clears the exit fault of a stopped container."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("fault"), io.BytesIO(b""))
    return buffer.getvalue()


async def test_hostile_operator_requests(make_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("op-token\n")
    port = free_ports(1)[0]
    cluster = make_cluster(supervisor={"listen": f"0.0.0.0:{port}", "token_file": str(token_file)})
    await cluster.start()
    await cluster.healthy(90)
    for method, path in (
        ("POST", "/v1/nodes/db0/pause"),
        ("POST", "/v1/pause"),
        ("POST", "/v1/resume"),
        ("POST", "/v1/nodes/db0/restart"),
        ("POST", "/v1/rolling-restart"),
        ("GET", "/v1/operations/x"),
        ("POST", "/v1/operations/x/cancel"),
        ("POST", "/v1/reload"),
        ("GET", "/v1/events"),
        ("GET", "/v1/cluster"),
        ("GET", "/v1/status"),
        ("GET", "/metrics"),
        ("GET", "/readyz"),
        ("GET", "/"),
    ):
        assert (await call(cluster, method, path))[0] == 401, (method, path)
        assert (await call(cluster, method, path, token="wrong"))[0] == 401, (method, path)
    code, body = await call(cluster, "POST", "/v1/nodes/nope/restart", token="op-token")
    assert code == 404 and body["known"] == ["meta0", "db0", "db1"]
    assert (await call(cluster, "POST", "/v1/nodes/db0/pause", token="op-token", raw=b"{not json"))[0] == 400
    assert (await call(cluster, "POST", "/v1/nodes/db0/pause", token="op-token", raw=b"[1]"))[0] == 400
    assert (await call(cluster, "POST", "/v1/nodes/db0/pause", {"who": "mallory"}, token="op-token"))[
        0
    ] == 400
    assert (await call(cluster, "POST", "/v1/rolling-restart", {"role": "all"}, token="op-token"))[0] == 400
    assert (await call(cluster, "POST", "/v1/nodes/db0/restart", token="op-token", raw=b"x" * (1 << 20)))[
        0
    ] == 413
    assert (await call(cluster, "GET", "/v1/operations/op-nope", token="op-token"))[0] == 404
    assert cluster.cluster_state() == "healthy" and cluster.task is not None and not cluster.task.done()


async def test_a_slow_flush_is_bounded_inside_the_stop_s_deadline(
    make_cluster: Callable[..., Cluster], docker_client: docker.DockerClient
) -> None:
    """The real flush answers only when every table is flushed: one that takes a minute gets half of
    stop_timeout, is reported, and the restart goes on (stop, start, shards) instead of hanging."""
    cluster = make_cluster(supervisor={"stop_timeout": "4s"})
    await cluster.start()
    await cluster.healthy(120)
    db0 = await cluster.container("db0")
    result = await asyncio.to_thread(db0.exec_run, ["ceres-emulator-fault", "flush-slow", "60"])
    assert result.exit_code == 0, result.output
    with DockerEvents(docker_client, cluster.name) as events:
        code, body = await call(cluster, "POST", "/v1/nodes/db0/restart")
        assert code == 202
        doc = await follow(cluster, body["operation"], 120)
        assert doc["outcome"] == "ok", json.dumps(doc, indent=1)
        assert len(events.chosen_stops("db0")) == 1 and events.of("db0", ("start",))
    steps = [s["text"] for s in doc["steps"]]
    assert any("flush_memtable: failed" in s and "stopping anyway" in s for s in steps), steps


async def test_a_planned_stop_of_a_node_still_starting_waits_for_it_or_kills_it(
    make_cluster: Callable[..., Cluster], docker_client: docker.DockerClient
) -> None:
    """The real CeresDB takes SIGTERM only once it has started; before, the signal ends it in the
    middle of its start. A planned restart of a node still recovering its WAL waits for it to come
    up (then SIGTERM) until stop_timeout; a node still not up by then is killed (SIGKILL, no SIGTERM
    first). Each way is said in the operation's steps and the event, and read from Docker's events."""
    cluster = make_cluster(db=1, supervisor={"stop_timeout": "6s"})
    await cluster.start()
    await cluster.healthy(120)

    async def restart_while_starting(came_up: bool) -> tuple[dict[str, Any], DockerEvents]:
        db0 = await cluster.container("db0")
        await asyncio.to_thread(emulator_hook, db0, "start-slow", "600")
        recoveries = (await asyncio.to_thread(db0.logs)).count(b"recovering wal")
        await asyncio.to_thread(
            kill_main_process, db0
        )  # a crash: started again at once, into a long WAL recovery
        await eventually(
            lambda: asyncio.to_thread(lambda: db0.logs().count(b"recovering wal") > recoveries),
            30,
            "db0 recovering its WAL",
        )
        with DockerEvents(docker_client, cluster.name) as events:
            code, body = await call(cluster, "POST", "/v1/nodes/db0/restart")
            assert code == 202, body

            async def step(text: str) -> bool:
                _code, doc = await call(cluster, "GET", f"/v1/operations/{body['operation']}")
                return any(text in s["text"] for s in doc["steps"])

            await eventually(
                lambda: step("still starting: waiting for it to come up"), 30, "the stop waiting"
            )
            if came_up:
                await asyncio.to_thread(emulator_hook, db0, "start-slow", "0")
            else:
                await eventually(lambda: events.chosen_stops("db0"), 30, "db0 killed")
                await eventually(
                    lambda: asyncio.to_thread(lambda: db0.logs().count(b"recovering wal") > recoveries + 1),
                    30,
                    "db0 started again, recovering its WAL",
                )
                await asyncio.to_thread(emulator_hook, db0, "start-slow", "0")
            doc = await follow(cluster, body["operation"], 120)
        assert doc["outcome"] == "ok", json.dumps(doc, indent=1)
        return doc, events

    doc, events = await restart_while_starting(came_up=True)
    (stop,) = events.chosen_stops("db0")
    assert stop.signal == "15", "a node that came up is stopped with SIGTERM"
    assert [e.exit_code for e in events.of("db0", ("die",))] == ["0"]
    assert any("it came up after" in str(e.message) for e in cluster.supervisor.events), "the event says so"  # type: ignore[union-attr]

    doc, events = await restart_while_starting(came_up=False)
    (stop,) = events.chosen_stops("db0")
    assert stop.signal == "9", "a node still starting after stop_timeout is killed, no SIGTERM first"
    assert [e.exit_code for e in events.of("db0", ("die",))] == ["137"]
    steps = [s["text"] for s in doc["steps"]]
    assert "db0: still starting after 6s: SIGKILL" in steps, steps
