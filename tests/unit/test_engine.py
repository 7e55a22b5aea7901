"""The Docker adapter (adapters/engine.py) and the observer (observation/observer.py) through the
real Docker SDK, against the in-process Docker Engine of tests/unit/fakedocker.py (Docker's HTTP
API on a unix socket)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ceres_supervisor.adapters import dockerread
from ceres_supervisor.adapters.dockerread import EngineEvent, status_key
from ceres_supervisor.adapters.engine import (
    Engine,
    EngineConflict,
    EngineError,
    EngineImageMissing,
    EngineNotFound,
    EngineTimeout,
    EngineUnavailable,
)
from ceres_supervisor.desired.containers import LABEL_CLUSTER, LABEL_HOST, LABEL_MANAGED, LABEL_NODE
from ceres_supervisor.desired.locality import Locality
from ceres_supervisor.observation.observer import Inflight, Observer, follow_events

from .fakedocker import FakeDocker
from .scenes import build
from .test_coordinator import until

IMAGE = "ceresdb/ceresdb-server:v1.2.2"


def labels(node: str, cluster: str = "c", host: str = "127.0.0.1") -> dict[str, str]:
    return {LABEL_MANAGED: "true", LABEL_CLUSTER: cluster, LABEL_NODE: node, "io.ceres-supervisor.role": "ceresdb",
            LABEL_HOST: host, "io.ceres-supervisor.spec-hash": "h"}  # fmt: skip


@pytest.fixture
async def docker(tmp_path: Path) -> AsyncIterator[FakeDocker]:
    fake = FakeDocker(str(tmp_path / "docker.sock"), images=(IMAGE,))
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def engine(docker: FakeDocker) -> AsyncIterator[Engine]:
    one = Engine("c", base_url=f"unix://{docker.socket_path}")
    yield one
    one.close()


async def test_only_this_cluster_s_managed_containers_are_listed_and_inspected_once(
    docker: FakeDocker, engine: Engine
) -> None:
    mine = docker.add("ceres-c-db0", IMAGE, labels("db0"))
    docker.add("ceres-other-db0", IMAGE, labels("db0", cluster="other"))
    docker.add("unrelated", "nginx", {})
    listed = await engine.list_containers()
    assert [(c.id, c.name, c.node, c.role, c.state, c.host) for c in listed] == [
        (mine, "ceres-c-db0", "db0", "ceresdb", "running", "127.0.0.1")
    ]
    assert listed[0].started_at is not None and listed[0].exit_code is None
    inspected = docker.calls.count(f"GET /containers/{mine}/json")
    await engine.list_containers()
    assert docker.calls.count(f"GET /containers/{mine}/json") == inspected  # unchanged: not inspected again
    engine.invalidate(mine)  # an event said it changed
    await engine.list_containers()
    assert docker.calls.count(f"GET /containers/{mine}/json") == inspected + 1
    await docker.kill(mine, 137, oom=True)
    (dead,) = await engine.list_containers()
    assert (dead.state, dead.exit_code, dead.oom_killed, dead.finished_at is not None) == (
        "exited",
        137,
        True,
        True,
    )
    del docker.containers[mine]
    assert await engine.list_containers() == []


async def test_a_container_growing_older_is_not_inspected_again_one_started_anew_is(
    docker: FakeDocker, engine: Engine
) -> None:
    """Docker writes a container's age into the list's Status ("Up 3 seconds"): a new age alone is
    no change, an age that went down is (it started again), even when no event said so."""
    mine = docker.add("ceres-c-db0", IMAGE, labels("db0"))
    inspect = f"GET /containers/{mine}/json"
    (first,) = await engine.list_containers()
    inspected = docker.calls.count(inspect)
    for later_s in (5.0, 59.0, 61.0, 3 * 3600.0):
        docker.later_s = later_s
        assert await engine.list_containers() == [first]
    assert docker.calls.count(inspect) == inspected, "older only: read from what was inspected"
    docker.later_s = 0.0
    docker._set_running(mine)  # started again behind the events' back: younger than last seen
    (again,) = await engine.list_containers()
    assert docker.calls.count(inspect) == inspected + 1 and again.started_at != first.started_at
    docker.containers[mine]["State"].update(Paused=True, Status="paused")
    (paused,) = await engine.list_containers()
    assert docker.calls.count(inspect) == inspected + 2 and paused.state == "paused"


@pytest.mark.parametrize(
    ("state", "status", "key", "age"),
    [
        ("running", "Up Less than a second", "running|Up ", 0),
        ("running", "Up 59 seconds", "running|Up ", 59),
        ("running", "Up About a minute", "running|Up ", 60),
        ("paused", "Up 3 minutes (Paused)", "paused|Up  (Paused)", 180),
        ("running", "Up 2 hours (healthy)", "running|Up  (healthy)", 7200),
        ("exited", "Exited (137) About an hour ago", "exited|Exited (137)  ago", 3600),
        ("running", "Up 3 weeks", "running|Up ", 3 * 604800),
        ("created", "Created", "created|Created", None),
        ("dead", "Dead", "dead|Dead", None),
    ],
)
def test_the_list_s_status_is_read_without_its_age(
    state: str, status: str, key: str, age: int | None
) -> None:
    assert status_key(state, status) == (key, age)


async def test_actions_create_start_stop_and_remove_containers(
    docker: FakeDocker, engine: Engine, tmp_path: Path
) -> None:
    node = build(tmp_path).node("db0")
    assert node is not None
    cid = await engine.create_and_start(node.container)
    c = docker.containers[cid]
    assert c["State"]["Running"] and c["Config"]["Labels"] == node.container.labels
    assert c["HostConfig"]["RestartPolicy"] == {"Name": "no"} and c["HostConfig"]["NetworkMode"] == "host"
    with pytest.raises(EngineConflict, match="already in use"):
        await engine.create_and_start(node.container)
    await engine.stop(cid, 1.0)
    assert c["State"]["Status"] == "exited"
    await engine.stop(cid, 1.0)  # already stopped: nothing to do
    await engine.start(cid)
    assert c["State"]["Running"]
    c["State"].update(Paused=True, Status="paused")
    await engine.stop(cid, 1.0)  # a paused container is unpaused first, then stopped
    assert f"POST /containers/{cid}/unpause" in docker.calls and c["State"]["Status"] == "exited"
    await engine.remove(cid)
    await engine.remove(cid)  # gone already: fine
    assert cid not in docker.containers
    with pytest.raises(EngineNotFound, match="No such container"):
        await engine.start(cid)


async def test_what_docker_refuses_becomes_the_adapter_s_own_errors(
    docker: FakeDocker, engine: Engine, tmp_path: Path
) -> None:
    node = build(
        tmp_path,
        '[[meta.nodes]]\nname = "m"\nhost = "127.0.0.1"\n[[ceresdb.nodes]]\nname = "d"\nhost = "127.0.0.1"\n',
    ).node("m")
    assert node is not None
    with pytest.raises(EngineImageMissing, match="image not present on this host"):
        await engine.create_and_start(node.container)  # the meta image is not present
    assert await engine.image_exists(IMAGE) is True and await engine.image_exists("nope:1") is False
    docker.fail["GET /containers/json"] = (500, "the daemon is sick")
    with pytest.raises(EngineError, match="list containers: the daemon is sick"):
        await engine.list_containers()
    await engine.ping()


async def test_a_container_s_last_log_lines(docker: FakeDocker, engine: Engine) -> None:
    cid = docker.add("ceres-c-db0", IMAGE, labels("db0"))
    docker.logs[cid] = b"starting\nconfig ok\nexit: bad wal\n"
    assert await engine.logs_tail(cid, 3) == "starting\nconfig ok\nexit: bad wal"


async def test_stop_all_stops_each_at_once_and_says_which_failed(docker: FakeDocker, engine: Engine) -> None:
    a, b = docker.add("ceres-c-db0", IMAGE, labels("db0")), docker.add("ceres-c-db1", IMAGE, labels("db1"))
    docker.fail[f"POST /containers/{b}/stop"] = (500, "cannot kill")
    errors = await engine.stop_all([a, b, "0" * 64], 1.0)
    assert errors == {b: "stop container: cannot kill"}
    assert docker.containers[a]["State"]["Status"] == "exited" and await engine.stop_all([], 1.0) == {}


async def test_no_socket_means_no_engine(tmp_path: Path) -> None:
    gone = Engine("c", base_url=f"unix://{tmp_path}/none.sock")
    try:
        with pytest.raises(EngineUnavailable, match=f"no socket at {tmp_path}/none.sock"):
            await gone.list_containers()
    finally:
        gone.close()


async def test_a_hung_engine_fails_the_observation_at_its_deadline(
    docker: FakeDocker, engine: Engine
) -> None:
    await engine.ping()  # connected
    engine.list_timeout_s = 0.2
    docker.hang.clear()
    try:
        with pytest.raises(EngineTimeout, match=r"list containers: no answer within 0\.2s"):
            await engine.list_containers()
    finally:
        docker.hang.set()


async def test_an_action_that_outlives_its_deadline_is_awaited_to_its_end(engine: Engine) -> None:
    finished = threading.Event()

    def slow() -> None:
        time.sleep(0.3)
        finished.set()

    with pytest.raises(EngineTimeout, match=r"slow: no answer within 0\.05s"):
        await engine._call("slow", slow, timeout_s=0.05)
    assert finished.is_set()  # never left running behind the caller's back


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, None),
        ("0001-01-01T00:00:00Z", None),
        ("2026-11-26T04:00:00.123456789Z", "2026-11-26T04:00:00.123456+00:00"),
        ("2026-11-26T04:00:00Z", "2026-11-26T04:00:00+00:00"),
    ],
)
def test_docker_s_nanosecond_times_are_read(text: str | None, expected: str | None) -> None:
    parsed = dockerread.parse_time(text)
    assert (parsed.isoformat() if parsed else None) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"Action": "die", "id": "x", "timeNano": 5, "Actor": {"Attributes": {LABEL_NODE: "db0", "exitCode": "137", LABEL_HOST: "h"}}},
         ("die", "x", "db0", 137, 5, "h")),
        ({"status": "health_status: healthy", "id": "x"}, None),
        ({"Action": "oom", "Actor": {"ID": "y", "Attributes": {"exitCode": "n/a"}}}, ("oom", "y", "", None, 0, "")),
    ],
)  # fmt: skip
def test_events_are_read_from_docker_s_json(raw: dict[str, Any], expected: tuple[Any, ...] | None) -> None:
    event = dockerread.event_from(raw)
    got = (
        None
        if event is None
        else (event.action, event.container_id, event.node, event.exit_code, event.at_ns, event.host)
    )
    assert got == expected


# --- the events stream and the observer ------------------------------------------------------------------------


async def test_events_are_followed_across_an_engine_restart(docker: FakeDocker, engine: Engine) -> None:
    seen: list[EngineEvent] = []
    breaks: list[str] = []
    following = asyncio.ensure_future(follow_events(engine, seen.append, breaks.append))
    try:
        await until(lambda: docker.listeners, "the stream is open")
        cid = docker.add("ceres-c-db0", IMAGE, labels("db0"))
        await docker.kill(cid, 1)
        docker.add("ceres-other-x", IMAGE, labels("x", cluster="other"))
        await until(lambda: [e.action for e in seen] == ["die"], "the die event")
        assert (seen[0].node, seen[0].exit_code, seen[0].container_id) == ("db0", 1, cid)
        await docker.stop()
        await until(lambda: breaks, "the break is told")
        await docker.start()
        await until(lambda: docker.listeners, "reconnected")
        await engine.start(cid)
        await until(lambda: [e.action for e in seen][-1:] == ["start"], "events after the restart")
    finally:
        following.cancel()
        with pytest.raises(asyncio.CancelledError):
            await following


async def test_the_observer_reports_what_runs_and_what_stopped_while_docker_was_away(
    docker: FakeDocker, engine: Engine, tmp_path: Path
) -> None:
    desired = build(tmp_path)
    db0 = desired.node("db0")
    assert db0 is not None
    cid = docker.add("ceres-defaultCluster-db0", IMAGE, db0.container.labels)
    orphan = docker.add("ceres-defaultCluster-db9", IMAGE, {**db0.container.labels, LABEL_NODE: "db9"})
    docker.add(
        "ceres-defaultCluster-db1", IMAGE, {**db0.container.labels, LABEL_NODE: "db1", LABEL_HOST: "10.9.9.9"}
    )
    engine.cluster = "defaultCluster"
    observer = Observer(engine, Locality(None, {"127.0.0.1": True}))
    first = await observer.observe(desired, None, Inflight({"db0": "start"}, {}))
    assert set(first.containers) == {"db0"} and [o.id for o in first.orphans] == [
        orphan
    ]  # db1 is another host's
    assert first.busy == {"db0": "start"} and first.engine_error is None
    assert first.meta["meta0"].alive.detail == "container not running"
    observer.engine_interrupted("the stream broke")
    await docker.kill(cid, 137)
    engine.invalidate(cid)
    back = await observer.observe(desired, None, Inflight({}, {}))
    assert back.engine_restart_exits == {cid}  # stopped while the engine was away: it died with it
    await docker.stop()
    away = await observer.observe(desired, None, Inflight({}, {}))
    assert away.engine_error is not None and "no socket" in away.engine_error
    assert set(away.containers) == {"db0"}  # the last known, kept for the status


def test_a_container_without_a_host_label_is_this_supervisor_s_only_without_host() -> None:
    from ceres_supervisor.model.observed import ObservedContainer  # noqa: PLC0415

    old = ObservedContainer("x", "n", "db0", "ceresdb", "h", "running", "img", host="")
    assert Observer(None, Locality()).owns(old) is True  # type: ignore[arg-type]
    assert Observer(None, Locality("127.0.0.2")).owns(old) is False  # type: ignore[arg-type]
