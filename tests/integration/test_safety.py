"""Never make an outage worse: the disruption budget, judged from Docker's own events;
the daemon's own troubles (a hung engine call, a reload that breaks, a stop under a deadline)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import docker
import pytest
from docker.models.containers import Container

from ceres_supervisor.actions import executor
from ceres_supervisor.adapters.engine import Engine, EngineTimeout
from ceres_supervisor.daemon import shutdown
from testkit.dockerevents import DockerEvents
from testkit.helpers import http_json
from testkit.standins import IMAGE_PREFIX

from .conftest import Cluster, Daemon, eventually
from .test_api import PausableDockerProxy
from .test_reload import identities

IMAGE = f"{IMAGE_PREFIX}/ceresdb-server:1.2.7"
IGNORES_SIGTERM = [
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)",
]


def managed(cluster: str, node: str) -> dict[str, str]:
    return {
        "io.ceres-supervisor.test": "safety",
        "io.ceres-supervisor.managed": "true",
        "io.ceres-supervisor.cluster": cluster,
        "io.ceres-supervisor.node": node,
        "io.ceres-supervisor.role": "ceresdb",
    }


async def fault(cluster: Cluster, node: str, *args: str) -> None:
    container = await cluster.container(node)
    result = await asyncio.to_thread(container.exec_run, ["ceres-emulator-fault", *args])
    assert result.exit_code == 0, result.output


def waiting_for_budget(cluster: Cluster, *nodes: str) -> bool:
    return all(
        "waiting for disruption budget" in (cluster.view(n).reason or "") for n in nodes if cluster.view(n)
    )


async def test_shared_trouble_never_takes_more_than_the_budget_down(
    make_cluster: Callable[..., Cluster], docker_client: docker.DockerClient
) -> None:
    """All three meta members fail their probes at once, then every CeresDB node: the supervisor stops
    at most one meta member and max_unavailable (1) CeresDB nodes at a time, read from Docker's events.
    No meta member is stopped while another is unhealthy (etcd's quorum); once two recover by
    themselves the third is restarted. The CeresDB nodes, which still hold their shards, go one by one."""
    cluster = make_cluster(meta=3, db=3)
    await cluster.start()
    await cluster.healthy(120)
    with DockerEvents(docker_client, cluster.name) as events:
        metas = ("meta0", "meta1", "meta2")
        await asyncio.gather(*(fault(cluster, m, "freeze-http") for m in metas))
        await eventually(
            lambda: (
                waiting_for_budget(cluster, *metas) and all(cluster.state(m) == "unhealthy" for m in metas)
            ),
            30,
            "every meta member unhealthy and waiting for the budget",
        )
        assert events.chosen_stops() == []
        await asyncio.gather(*(fault(cluster, m, "clear") for m in metas[1:]))  # meta0 stays wedged
        await eventually(
            lambda: len(events.chosen_stops("meta0")) == 1, 60, "meta0 restarted once the others are back"
        )
        await cluster.healthy(120)

        # CeresDB nodes that fail their probes still hold their shards: they are restarted one at a time.
        dbs = ("db0", "db1", "db2")
        await asyncio.gather(*(fault(cluster, d, "freeze-http") for d in dbs))
        await eventually(
            lambda: all(len(events.chosen_stops(d)) == 1 for d in dbs),
            240,
            "every CeresDB node restarted, one after the other",
        )
        await cluster.healthy(120)
        most_meta, meta_intervals = events.most_down_at_once("meta")
        most_db, db_intervals = events.most_down_at_once("ceresdb")
    assert most_meta == 1, meta_intervals
    assert most_db == 1, db_intervals
    assert [e.node for e in events.chosen_stops() if e.role == "meta"] == ["meta0"]
    assert sorted(e.node for e in events.chosen_stops() if e.role == "ceresdb") == ["db0", "db1", "db2"]


async def test_a_hung_docker_call_is_never_run_behind_the_caller(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    """A call still queued when its time is up is cancelled; one already running is awaited to its end,
    so nothing the supervisor reported as failed happens later. Observation has its own path."""
    async with PausableDockerProxy(tmp_path / "docker.sock") as proxy:
        engine = Engine("t-hung", base_url=f"unix://{proxy.path}", workers=1)
        image = IMAGE
        sleeper = await asyncio.to_thread(
            docker_client.containers.create,
            image,
            ["-c", "import time; time.sleep(600)"],
            entrypoint="python3",
            labels={"io.ceres-supervisor.test": "hung"},
        )
        try:
            await engine.ping()
            proxy.open.clear()  # the engine hangs from now on
            first = asyncio.create_task(
                engine._call("start container", lambda: engine._api().start(sleeper.id), timeout_s=1.0)
            )
            await eventually(lambda: proxy.held > 0, 10, "the first call held by the proxy")
            queued = asyncio.create_task(
                engine._call(
                    "remove container",
                    lambda: engine._api().remove_container(sleeper.id, force=True),
                    timeout_s=1.0,
                )
            )
            await eventually(queued.done, 5, "the queued call timing out")
            assert isinstance(queued.exception(), EngineTimeout) and "not started" in str(queued.exception())
            await asyncio.sleep(1.5)  # past the first call's timeout: it must still be waited for
            assert not first.done()
            proxy.open.set()
            await eventually(first.done, 30, "the running call awaited to its end")
            assert isinstance(first.exception(), EngineTimeout)
            await asyncio.to_thread(sleeper.reload)
            assert sleeper.status == "running"  # it ran, and it was over before the caller was told
            await asyncio.sleep(1.0)  # the cancelled remove would have run by now
            await asyncio.to_thread(sleeper.reload)  # still there: the queued remove never ran
        finally:
            proxy.open.set()
            engine.close()
            await asyncio.to_thread(sleeper.remove, force=True)


async def test_observation_is_not_starved_by_long_stops(docker_client: docker.DockerClient) -> None:
    cluster = f"t-starve-{uuid.uuid4().hex[:6]}"
    engine = Engine(cluster, workers=1)
    stubborn = await asyncio.to_thread(
        docker_client.containers.run,
        IMAGE,
        IGNORES_SIGTERM,
        entrypoint="python3",
        detach=True,
        labels=managed(cluster, "x"),
    )
    try:
        stop = asyncio.create_task(engine.stop(stubborn.id, timeout_s=6))  # holds the only action thread ~6 s
        await eventually(
            lambda: (
                stubborn.reload() or (stubborn.attrs["State"]["Running"] and engine._action_pool._threads)
            ),
            5,
            "the stop under way",
        )
        # A deadline, not a timing: a list queued behind the 6 s stop would miss it.
        listed = await asyncio.wait_for(engine.list_containers(), 3.0)
        assert [c.node for c in listed] == ["x"]
        await stop
    finally:
        engine.close()
        await asyncio.to_thread(stubborn.remove, force=True)


async def test_on_exit_stop_stops_every_container_at_once_however_many(
    docker_client: docker.DockerClient,
) -> None:
    """Ten CeresDB containers that ignore SIGTERM, an engine with one action thread: the stop of the
    cluster takes one stop_timeout (each on a thread of its own), not ten queued one after the other
    (then cut short by the daemon's deadline, the rest left running)."""
    cluster = f"t-stopall-{uuid.uuid4().hex[:6]}"
    engine = Engine(cluster, workers=1)
    made = [
        await asyncio.to_thread(
            docker_client.containers.run,
            IMAGE,
            IGNORES_SIGTERM,
            entrypoint="python3",
            detach=True,
            labels=managed(cluster, f"db{i}"),
        )
        for i in range(10)
    ]
    try:
        problems = await asyncio.wait_for(
            executor.stop_cluster(engine, engine.list_containers, 2.0, remove=False), 15
        )
        assert problems == []
        for c in made:
            await asyncio.to_thread(c.reload)
            assert c.status == "exited", (c.name, c.status)
    finally:
        engine.close()
        for c in made:
            await asyncio.to_thread(c.remove, force=True)


async def test_a_broken_topology_record_is_refused_and_the_daemon_keeps_its_state(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster()
    supervisor = await cluster.start()
    await cluster.healthy(90)
    before = await identities(cluster)
    (cluster.root / "state" / "topology.json").write_text("[1, 2]")
    async with aiohttp.ClientSession() as session, session.post(f"{cluster.api_url}/v1/reload") as response:
        assert response.status == 422
        body = await response.json()
    assert "topology.json" in body["error"]
    assert cluster.task is not None and not cluster.task.done()
    assert not supervisor.loop.reload_result.ok and supervisor.spec is cluster.spec
    await cluster.healthy(30)
    assert await identities(cluster) == before


async def test_state_dir_and_flavor_cannot_change_under_a_running_daemon(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(version="1.2.7")
    await cluster.start()
    await cluster.healthy(90)
    before = await identities(cluster)
    good = cluster.text
    for changed, key in (
        (good.replace('state_dir = "', 'state_dir = "/srv'), "cluster.state_dir"),
        (
            good.replace('flavor = "ceresdb"', 'flavor = "horaedb"').replace(
                'version = "1.2.7"', 'version = "2.0.0"'
            ),
            "cluster.flavor",
        ),
    ):
        cluster.write(changed)
        result = await asyncio.wait_for(cluster.supervisor.request_reload(), 30)  # type: ignore[union-attr]
        assert not result.ok and f"{key}: cannot change from" in (result.error or ""), result.error
    assert await identities(cluster) == before


async def test_a_node_removed_while_the_daemon_was_down_is_removed_at_start(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(db=2)
    cluster.text = cluster.text.replace("[meta]\n", '[meta]\ntopology = "dynamic"\n', 1)
    await cluster.start()
    await cluster.healthy(90)
    await cluster.stop()
    cluster.text = cluster.text[: cluster.text.index('[[ceresdb.nodes]]\nname = "db1"')]
    await cluster.start()
    await eventually(
        lambda: asyncio.to_thread(
            lambda: (
                cluster.container_name("db1")
                not in {c.name for c in cluster.client.containers.list(all=True)}
            )
        ),
        30,
        "db1's container removed at start",
    )
    assert (cluster.root / "state" / "data" / "db1").is_dir(), "its data directory is kept"
    assert any(e.node == "db1" and e.type == "remove" for e in cluster.supervisor.events)  # type: ignore[union-attr]


class Notify:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET (closed by the fixture)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.path = path
        self.fields: list[tuple[float, str]] = []
        """(wall time received, field): comparable with Docker's event times."""

    def pump(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return [f for _t, f in self.fields]
            self.fields += [(time.time(), f) for f in data.decode().split("\n")]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[Notify]:
    listener = Notify(tmp_path / "notify.sock")
    try:
        yield listener
    finally:
        listener.close()


async def test_stop_is_staged_and_a_second_signal_exits_at_once(
    make_cluster: Callable[..., Cluster],
    tmp_path: Path,
    daemons: list[Daemon],
    notify: Notify,
    docker_client: docker.DockerClient,
) -> None:
    cluster = make_cluster(supervisor={"on_exit": "stop", "stop_timeout": "20s"})
    cluster.write()
    daemon = Daemon(cluster.path, tmp_path / "d.log", env={"NOTIFY_SOCKET": str(notify.path)}).start()
    daemons.append(daemon)
    await eventually(lambda: daemon.get("/readyz")[0] == 200, 120, "the cluster healthy")
    # First signal: STOPPING=1 before anything else; the API closes; then the cluster stops in order.
    with DockerEvents(docker_client, cluster.name) as events:
        daemon.signal(signal.SIGTERM)
        fields = await eventually(lambda: "STOPPING=1" in notify.pump() and notify.pump(), 10, "STOPPING=1")
        assert daemon.wait(60) == 0
        stops = [e.node for e in events.of(actions=("kill",))]
    assert "STOPPING=1" in fields
    assert sorted(stops[:2]) == ["db0", "db1"] and stops[2:] == ["meta0"], stops
    stopping_at = next(t for t, f in notify.fields if f == "STOPPING=1")
    first_kill = min(e.at for e in events.of(actions=("kill",)))
    assert stopping_at < first_kill, (stopping_at, first_kill)  # STOPPING=1 before any container stops

    # Second signal during the stop: out at once, containers left as they are.
    daemon2 = Daemon(cluster.path, tmp_path / "d2.log", env={"NOTIFY_SOCKET": str(notify.path)}).start()
    daemons.append(daemon2)
    await eventually(
        lambda: daemon2.get("/readyz")[0] == 200, 120, "healthy again (started by the new daemon)"
    )
    await fault(cluster, "db0", "ignore-sigterm")  # its stop would take the whole stop_timeout
    daemon2.signal(signal.SIGTERM)
    await eventually(lambda: "stopping_cluster" in daemon2.log.read_text(), 30, "the cluster being stopped")
    daemon2.signal(signal.SIGTERM)
    assert daemon2.wait(10) == shutdown.FORCED_EXIT_CODE  # not the 20 s stop_timeout of db0
    states = {c.labels["io.ceres-supervisor.node"]: c.status for c in await cluster.containers()}
    assert states["meta0"] == "running", states  # meta is stopped after CeresDB: it was not reached


async def test_no_watchdog_while_docker_cannot_be_observed(
    make_cluster: Callable[..., Cluster], tmp_path: Path, daemons: list[Daemon], notify: Notify
) -> None:
    cluster = make_cluster()
    cluster.write()
    env = {
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": "2000000",
        "DOCKER_HOST": f"unix://{tmp_path}/none.sock",
    }
    daemon = Daemon(cluster.path, tmp_path / "d.log", env=env).start()
    daemons.append(daemon)
    await eventually(lambda: daemon.get("/healthz")[0] == 200, 30, "the API")
    code, ready = daemon.get("/readyz")
    assert (code, ready) == (503, {"ready": False, "state": "unknown"})
    first = daemon.get("/healthz")[1]["cycle"]
    # Three more turns of the loop, each past the watchdog interval (1 s): a completed cycle would
    # have sent WATCHDOG=1.
    await eventually(
        lambda: daemon.get("/healthz")[1]["cycle"] >= first + 3, 30, "three more turns of the loop"
    )
    fields = notify.pump()
    assert "WATCHDOG=1" not in fields and "READY=1" not in fields, fields
    assert any(f.startswith("STATUS=unknown: docker engine unavailable") for f in fields), fields


async def test_a_restart_interrupted_by_the_daemon_s_stop_is_completed(
    make_cluster: Callable[..., Cluster], docker_client: docker.DockerClient
) -> None:
    """The daemon is stopped (on_exit = "leave") while a planned restart of db0 is between its stop
    and its start: the restart runs to its end before the daemon exits, so db0 is not left stopped."""
    cluster = make_cluster(version="1.2.7", supervisor={"stop_timeout": "4s"})
    supervisor = await cluster.start()
    await cluster.healthy(120)
    await fault(cluster, "db0", "ignore-sigterm")  # its stop takes the whole stop_timeout, then SIGKILL
    with DockerEvents(docker_client, cluster.name) as events:
        code, answer = await asyncio.to_thread(
            http_json, cluster.api_url + "/v1/nodes/db0/restart", {"who": "cli"}
        )
        assert code == 202, answer
        await eventually(lambda: events.chosen_stops("db0"), 30, "db0's stop under way")
        supervisor.request_stop()
        assert cluster.task is not None
        await asyncio.wait_for(cluster.task, 60)
        starts = events.of("db0", ("start",))
    container = await cluster.container("db0")
    assert container.status == "running" and starts, (container.status, starts)


async def test_a_node_never_starts_beside_a_container_writing_to_its_data_directory(
    make_cluster: Callable[..., Cluster], docker_client: docker.DockerClient
) -> None:
    """The real servers lock their data directory (RocksDB's LOCK, etcd's) and a second process on
    it exits 1, or worse. A running container that mounts db0's directory writable (a replacement
    left behind, another node pointed at it) keeps db0 from starting, named in the reason; once it
    has gone, db0 starts, beside a container that mounts the whole state directory (the
    supervisor's own, say), which writes to no node's data."""
    cluster = make_cluster(db=1)
    await cluster.start()
    await cluster.healthy(90)
    wal = cluster.root / "state" / "data" / "db0" / "wal"
    started: list[Container] = []
    try:
        bystander = await asyncio.to_thread(
            docker_client.containers.run,
            IMAGE,
            IGNORES_SIGTERM,
            entrypoint="python3",
            detach=True,
            name=f"{cluster.name}-bystander",
            network_mode="host",
            volumes={str(cluster.root / "state"): {"bind": "/state", "mode": "rw"}},
            labels={"io.ceres-supervisor.test": "safety"},
        )
        started.append(bystander)
        squatter = await asyncio.to_thread(
            docker_client.containers.run,
            IMAGE,
            IGNORES_SIGTERM,
            entrypoint="python3",
            detach=True,
            name=f"{cluster.name}-squatter",
            network_mode="host",
            volumes={str(wal): {"bind": "/squat", "mode": "rw"}},
            labels={"io.ceres-supervisor.test": "safety"},
        )
        started.append(squatter)
        db0 = await cluster.container("db0")
        await asyncio.to_thread(db0.kill)
        await eventually(
            lambda: (
                f"in use by running container {cluster.name}-squatter" in (cluster.record("db0").reason or "")
            ),
            30,
            "db0's start refused, the squatter named",
        )
        await asyncio.to_thread(db0.reload)
        assert db0.status == "exited", "db0 was started beside the squatter"
        await asyncio.to_thread(squatter.remove, force=True)
        await eventually(
            lambda: cluster.state("db0") == "healthy", 60, "db0 started once the squatter is gone"
        )
        await asyncio.to_thread(bystander.reload)
        assert bystander.status == "running"
    finally:
        for container in started:
            with contextlib.suppress(docker.errors.NotFound):
                await asyncio.to_thread(container.remove, force=True)
