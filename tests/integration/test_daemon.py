"""The daemon against a real Docker Engine and the stand-in images (issue: the supervisor daemon)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable

import aiohttp
import docker
import pytest

from ceres_supervisor.adapters.dockerread import parse_time
from ceres_supervisor.adapters.engine import Engine
from ceres_supervisor.desired import loading
from testkit.dockerevents import DockerEvents
from testkit.helpers import meta_leader, meta_leader_key, node_shards, shard_lock_leases, shard_locks
from testkit.standins import kill_main_process

from .conftest import Cluster, eventually


def created_at(container: object) -> float:
    parsed = parse_time(container.attrs["Created"])  # type: ignore[attr-defined]
    assert parsed is not None
    return parsed.timestamp()


def started_at(container: object) -> str:
    return str(container.attrs["State"]["StartedAt"])  # type: ignore[attr-defined]


def root(cluster: Cluster) -> str:
    return cluster.spec.release.root_path


def client_url(cluster: Cluster) -> str:
    meta = cluster.spec.meta.nodes[0]
    return f"http://{meta.host}:{meta.client_port}"


def endpoint(cluster: Cluster, node: str) -> str:
    n = cluster.node_spec(node)
    return f"{n.host}:{n.grpc_port}"


def assignment(cluster: Cluster) -> dict[int, str]:
    """shard -> endpoint as CeresMeta assigns them, asked of the leader (at 1.2.2 the crc32 ring
    often splits them unevenly, even all on one node)."""
    key = meta_leader_key(cluster.spec.cluster.version, root(cluster))
    leader = meta_leader(client_url(cluster), key)
    assert leader is not None, "no meta leader"
    address = leader[0][2].removeprefix("http://")
    chief = next(m for m in cluster.spec.meta.nodes if f"{m.host}:{m.client_port}" == address)
    return dict(node_shards(f"http://{chief.host}:{chief.http_port}", cluster.name))


async def all_locked(cluster: Cluster) -> dict[int, str]:
    """Every shard locked by the node meta assigns it to."""

    def check() -> dict[int, str] | None:
        locks = shard_locks(client_url(cluster), root=root(cluster), cluster=cluster.name)
        shards = cluster.spec.meta.shard_total
        return locks if len(locks) == shards and locks == assignment(cluster) else None

    return await eventually(lambda: asyncio.to_thread(check), 60, "every shard locked by its node")


VERSIONS = ["1.2.2", "1.2.5", "1.2.7", "2.0.0"]
"""The stand-in versions the daemon scenarios rotate over: each scenario runs on the versions where
what it checks differs, and every version meets the core scenarios somewhere (its health route,
root path, leader key, reopen pace): 1.2.2 one shard per tick and the old leader key, 1.2.5
batches and the table fetch that can exit, 1.2.7 the new leader key and health route, 2.0.0 the
HoraeDB flavor. The rest of the suite is spread over them."""


@pytest.mark.parametrize(("version", "meta_count"), [("1.2.2", 1), ("1.2.7", 3), ("2.0.0", 1)])
async def test_cold_start_starts_ceresdb_only_once_meta_is_ready(
    make_cluster: Callable[..., Cluster], version: str, meta_count: int
) -> None:
    cluster = make_cluster(meta=meta_count, db=2, version=version)
    spec = loading.load(cluster.write()).spec
    first_listed: list[float] = []

    async def watch_meta() -> None:
        """An observer of our own: the first moment any member lists the cluster. Each member is
        asked in a loop of its own: a follower does not answer a forwarded route on one machine (it
        forwards to itself), the leader does, and its loop must not wait for the others."""
        async with aiohttp.ClientSession() as session:

            async def ask(m: object) -> None:
                url = f"http://{m.host}:{m.http_port}/api/v1/clusters"  # type: ignore[attr-defined]
                while not first_listed:
                    asked = time.time()
                    try:
                        async with session.get(url, timeout=aiohttp.ClientTimeout(total=0.5)) as r:
                            body = await r.json(content_type=None)
                            if r.status == 200 and any(c["Name"] == spec.cluster.name for c in body["data"]):
                                first_listed.append(asked)
                    except (aiohttp.ClientError, TimeoutError, ValueError, TypeError, KeyError):
                        pass
                    await asyncio.sleep(0.02)

            await asyncio.gather(*(ask(m) for m in spec.meta.nodes))

    watcher = asyncio.create_task(watch_meta())
    try:
        await cluster.start()
        await cluster.healthy(90)
    finally:
        watcher.cancel()
    assert first_listed, "meta never listed the cluster"
    containers = await cluster.containers()
    assert sorted(c.name for c in containers) == sorted(
        cluster.container_name(n) for n in [m.name for m in spec.meta.nodes] + ["db0", "db1"]
    )
    for node in ("db0", "db1"):
        c = await cluster.container(node)
        assert created_at(c) >= first_listed[0] - 0.05, f"{node} created before meta listed the cluster"
    locks = await all_locked(cluster)
    assert sorted(locks) == list(range(8))


@pytest.mark.parametrize("version", ["1.2.5"])
async def test_sigkill_of_a_ceresdb_container_is_seen_and_restarted(
    make_cluster: Callable[..., Cluster], version: str
) -> None:
    cluster = make_cluster(version=version)
    supervisor = await cluster.start()
    await cluster.healthy(90)
    await all_locked(cluster)
    mine = endpoint(cluster, "db0")
    old_leases = {
        lease
        for holder, lease in shard_lock_leases(
            client_url(cluster), root=root(cluster), cluster=cluster.name
        ).values()
        if holder == mine
    }
    container = await cluster.container("db0")
    killed = time.time()
    kill_main_process(container)
    death = await eventually(
        lambda: next((e for e in supervisor.events if e.node == "db0" and e.type == "die"), None),
        5,
        "die event",
    )
    assert death.reason == "exit 137"
    assert death.at.timestamp() - killed < 1.0
    await eventually(lambda: cluster.record("db0").restarts == 1, 10, "db0 restarted once")
    await cluster.healthy(60)
    record = cluster.record("db0")
    assert record.last_exit is not None and record.last_exit.code == 137
    assert any(
        e.node == "db0" and e.type == "died" and e.reason == "exit 137 (SIGKILL)" for e in supervisor.events
    )
    assert (await cluster.container("db0")).id == container.id  # started again, not recreated

    expected = sum(1 for holder in assignment(cluster).values() if holder == mine)

    def relocked() -> bool:
        now = [
            lease
            for holder, lease in shard_lock_leases(
                client_url(cluster), root=root(cluster), cluster=cluster.name
            ).values()
            if holder == mine
        ]
        return len(now) == expected and not set(now) & old_leases

    await eventually(lambda: asyncio.to_thread(relocked), 45, "db0's shards locked again under new leases")


@pytest.mark.parametrize("version", ["2.0.0"])
async def test_sigkill_of_the_only_meta_blocks_ceresdb_and_recovers(
    make_cluster: Callable[..., Cluster], version: str
) -> None:
    cluster = make_cluster(version=version)
    supervisor = await cluster.start()
    await cluster.healthy(90)
    before = {n: started_at(await cluster.container(n)) for n in ("db0", "db1")}
    kill_main_process(await cluster.container("meta0"))
    await eventually(lambda: cluster.state("db0") == "blocked", 10, "db0 blocked while meta is down")
    await eventually(lambda: cluster.record("meta0").restarts == 1, 15, "meta0 restarted")
    await cluster.healthy(90)
    after = {n: started_at(await cluster.container(n)) for n in ("db0", "db1")}
    assert after == before, "a CeresDB node was restarted during the meta outage"
    assert all(cluster.record(n).restarts == 0 for n in ("db0", "db1"))
    assert not [
        e for e in supervisor.events if e.node in ("db0", "db1") and e.type in ("unhealthy", "lease_lost")
    ]


def clear_fault(container: object) -> None:
    """Empty the stand-in's fault file of a container that may be stopped (no exec then)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("fault"), io.BytesIO(b""))
    container.put_archive("/run/ceres-emulator", buffer.getvalue())  # type: ignore[attr-defined]


@pytest.mark.parametrize("version", ["1.2.7"])
async def test_meta_down_blocks_ceresdb_even_when_it_fails_its_probes(
    make_cluster: Callable[..., Cluster], docker_client: object, version: str
) -> None:
    """While meta is not ready a CeresDB node that fails its probes is blocked: never stopped. Once meta
    is back it is handled (it still fails: restarted once)."""
    cluster = make_cluster(version=version, supervisor={"backoff_initial": "2s", "backoff_max": "4s"})
    await cluster.start()
    await cluster.healthy(90)
    meta0 = await cluster.container("meta0")
    with DockerEvents(docker_client, cluster.name) as events:  # type: ignore[arg-type]
        await asyncio.to_thread(
            meta0.exec_run, ["ceres-emulator-fault", "exit", "0"]
        )  # meta down, and again at each start
        await eventually(lambda: cluster.state("db1") == "blocked", 20, "db1 blocked while meta is down")
        db1 = await cluster.container("db1")
        await asyncio.to_thread(db1.exec_run, ["ceres-emulator-fault", "freeze-http"])
        await eventually(
            lambda: "failed probes" in (cluster.view("db1").reason or ""),
            20,  # type: ignore[union-attr]
            "db1 failing its probes while blocked",
        )
        assert cluster.state("db1") == "blocked"
        await cluster.cycles(3)  # three more chances to stop it: still none
        assert events.chosen_stops("db1") == [] and cluster.state("db1") == "blocked"
        await asyncio.to_thread(clear_fault, meta0)
        await eventually(lambda: len(events.chosen_stops("db1")) == 1, 90, "db1 restarted once meta is back")
        await cluster.healthy(120)
    assert len(events.chosen_stops("db1")) == 1 and events.chosen_stops("db0") == []


async def test_a_node_that_exits_at_once_backs_off_and_is_marked_crashloop(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(
        supervisor={"backoff_initial": "500ms", "backoff_max": "2s", "crashloop_failures": 4}
    )
    supervisor = await cluster.start()
    await cluster.healthy(90)
    others = {
        n: (await cluster.container(n)).id + started_at(await cluster.container(n)) for n in ("meta0", "db0")
    }
    db1 = await cluster.container("db1")
    await asyncio.to_thread(
        db1.exec_run, ["ceres-emulator-fault", "exit", "3"]
    )  # every start exits 3 at once
    await eventually(lambda: cluster.state("db1") == "crashloop", 30, "db1 marked crashloop")
    await eventually(lambda: cluster.record("db1").failures >= 6, 30, "six failures of db1")
    # The delay decided for each failure (the backoff rules): 0, 0.5, 1, then the crashloop (its 4th
    # failure) waits backoff_max: 2, 2 s, each +-20%; and no start before its delay. How much later
    # a start comes is load (timings are bench/restart.py's business).
    died = [e for e in supervisor.events if e.node == "db1" and e.type == "died"][:5]
    decided = [float(e.message.rsplit("restart in ", 1)[1].rstrip("s")) for e in died]
    for delay, want in zip(decided, [0, 0.5, 1.0, 2.0, 2.0], strict=True):
        assert want * 0.8 - 0.05 <= delay <= want * 1.2 + 0.05, decided
    assert [e.type for e in supervisor.events if e.node == "db1" and e.type == "crashloop"] == ["crashloop"]
    crashloop_at = next(e.at for e in supervisor.events if e.node == "db1" and e.type == "crashloop")
    assert crashloop_at >= died[3].at  # flagged at the 4th failure, not before
    starts = [e.at.timestamp() for e in supervisor.events if e.node == "db1" and e.type == "start"]
    for death, delay in zip(died, decided, strict=True):
        assert min(s for s in starts if s >= death.at.timestamp()) - death.at.timestamp() >= delay - 0.1
    assert all(e.reason == "exit 3" for e in supervisor.events if e.node == "db1" and e.type == "die")
    now = {
        n: (await cluster.container(n)).id + started_at(await cluster.container(n)) for n in ("meta0", "db0")
    }
    assert now == others
    assert cluster.record("db0").restarts == 0


async def test_frozen_keepalives_are_lease_lost_then_restarted(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster()
    # A 3 s lease: heartbeats every 2 s, so CeresMeta's pace (two ticks and a heartbeat at 1.2.7)
    # runs out in seconds.
    cluster.text = cluster.text.replace("[ceresdb]\n", '[ceresdb]\nlease = "3s"\n', 1)
    supervisor = await cluster.start()
    await cluster.healthy(90)
    await all_locked(cluster)
    db0 = await cluster.container("db0")
    await asyncio.to_thread(db0.exec_run, ["ceres-emulator-fault", "freeze-lease"])
    # Its locks expire (shard_lock_ttl), it is reopening while CeresMeta could still reopen them (its
    # pace), then lease_lost, and restarted lease_grace later.
    await eventually(lambda: cluster.in_state("db0", "reopening"), 40, "db0 reopening")
    await eventually(lambda: cluster.in_state("db0", "lease_lost"), 90, "db0 lease_lost")
    await eventually(lambda: cluster.record("db0").restarts == 1, 20, "db0 restarted")
    reasons = [e.reason or "" for e in supervisor.events if e.node == "db0" and e.type == "lease_lost"]
    assert reasons and reasons[0].startswith("lease lost for")
    lost_for = float(reasons[0].removeprefix("lease lost for ").split("s", 1)[0])
    assert lost_for >= 5  # restarted only after lease_grace (5 s), by the planner's own readings
    await cluster.healthy(90)


async def test_paused_container_is_unhealthy_then_restarted(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster()
    supervisor = await cluster.start()
    await cluster.healthy(90)
    db1 = await cluster.container("db1")
    await asyncio.to_thread(db1.pause)
    await eventually(lambda: cluster.record("db1").restarts == 1, 20, "db1 restarted")
    unhealthy = [e for e in supervisor.events if e.node == "db1" and e.type == "unhealthy"]
    assert unhealthy and unhealthy[0].reason.startswith("unhealthy: 3 failed probes")  # type: ignore[union-attr]
    await cluster.healthy(60)
    assert (await cluster.container("db1")).status == "running"


async def test_missing_image_is_reported_while_the_rest_runs(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster()
    cluster.text = re.sub(
        r'(\[ceresdb\]\nimage = )"[^"]+"', r'\1"ceres-emulator/ceresdb-server:0.0.0-missing"', cluster.text
    )
    await cluster.start()
    await eventually(lambda: cluster.state("meta0") == "healthy", 60, "meta0 healthy")

    def reported() -> bool:
        view = cluster.view("db0")
        return view is not None and "is not present on this host" in (view.reason or "")

    await eventually(reported, 30, "db0 reported with the missing image")
    # Between retries it waits in backoff (each attempt shows `starting` for a moment).
    await eventually(lambda: cluster.state("db0") in ("backoff", "crashloop"), 10, "db0 in backoff")
    assert cluster.state("meta0") == "healthy"
    assert cluster.task is not None and not cluster.task.done()


async def test_adoption_recreates_only_changed_nodes_and_never_touches_others(
    make_cluster: Callable[..., Cluster], docker_client: object
) -> None:
    cluster = make_cluster(version="2.0.0")
    await cluster.start()
    await cluster.healthy(90)
    await cluster.stop()  # on_exit = "leave": the containers keep running
    before = {n: await cluster.container(n) for n in ("meta0", "db0", "db1")}
    assert all(c.status == "running" for c in before.values())
    image = cluster.spec.ceresdb.image
    sleeper = ["-c", "import time; time.sleep(600)"]
    foreign = await asyncio.to_thread(
        docker_client.containers.run,
        image,
        sleeper,
        entrypoint="python3",
        detach=True,  # type: ignore[attr-defined]
        labels={
            "io.ceres-supervisor.managed": "true",
            "io.ceres-supervisor.cluster": f"{cluster.name}x",
            "io.ceres-supervisor.node": "db0",
            "io.ceres-supervisor.role": "ceresdb",
        },
        name=f"foreign-{cluster.name}",
    )
    await asyncio.to_thread(
        docker_client.containers.run,
        image,
        sleeper,
        entrypoint="python3",
        detach=True,  # type: ignore[attr-defined]
        labels={
            "io.ceres-supervisor.managed": "true",
            "io.ceres-supervisor.cluster": cluster.name,
            "io.ceres-supervisor.node": "ghost",
            "io.ceres-supervisor.role": "ceresdb",
        },
        name=f"ceres-{cluster.name}-ghost",
    )
    elsewhere = await asyncio.to_thread(
        docker_client.containers.run,
        image,
        sleeper,
        entrypoint="python3",
        detach=True,  # type: ignore[attr-defined]
        labels={
            "io.ceres-supervisor.managed": "true",
            "io.ceres-supervisor.cluster": cluster.name,
            "io.ceres-supervisor.node": "db9",
            "io.ceres-supervisor.role": "ceresdb",
            "io.ceres-supervisor.host": "192.0.2.9",
        },
        name=f"ceres-{cluster.name}-db9",
    )
    try:
        # db1's rendered config changes: only db1 is recreated.
        cluster.text = cluster.text.replace(
            'name = "db1"', 'name = "db1"\nconfig = { logger = { level = "debug" } }'
        )
        await cluster.start()
        await eventually(
            lambda: (
                cluster.record("db1").run_key is not None
                and cluster.record("db1").run_key.split("@")[0] != before["db1"].id
            ),
            30,
            "db1 recreated",
        )
        await cluster.healthy(90)
        for node in ("meta0", "db0"):
            c = await cluster.container(node)
            assert (c.id, started_at(c)) == (before[node].id, started_at(before[node])), node
        assert (await cluster.container("db1")).id != before["db1"].id

        # A node removed from the file while the daemon was down is removed at its start (like a reload);
        # another cluster's container and another host's are never touched.
        async def ghost_gone() -> bool:
            return await asyncio.to_thread(_get_or_none, cluster, "ghost") is None

        await eventually(ghost_gone, 30, "the orphan removed")
        for c in (foreign, elsewhere):
            await asyncio.to_thread(c.reload)
            assert c.status == "running"
        assert any(e.node == "ghost" and e.type == "remove" for e in cluster.supervisor.events)  # type: ignore[union-attr]
    finally:
        for c in (foreign, elsewhere):
            await asyncio.to_thread(c.remove, force=True)


def _daemon(cluster: Cluster) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ceres_supervisor", "run", "-c", str(cluster.path), "--log-level", "debug"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _until_healthy_cycle(process: subprocess.Popen[str], timeout_s: float) -> None:
    """Read the daemon's JSON log until a cycle reports the cluster healthy."""
    assert process.stderr is not None
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        seen.append(line)
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") in ("cycle", "cycle_idle") and entry.get("state") == "healthy":
            return
    raise AssertionError(f"no healthy cycle within {timeout_s}s; last log lines: {seen[-5:]}")


@pytest.mark.parametrize("version", ["1.2.2"])
async def test_supervisor_killed_mid_start_or_when_healthy_restarts_nothing(
    make_cluster: Callable[..., Cluster], version: str
) -> None:
    cluster = make_cluster(version=version)
    cluster.write()
    processes: list[subprocess.Popen[str]] = []
    try:
        first = _daemon(cluster)
        processes.append(first)
        meta = await eventually(
            lambda: asyncio.to_thread(_get_or_none, cluster, "meta0"), 30, "meta0 created"
        )
        os.kill(first.pid, signal.SIGKILL)  # mid-start: meta exists, CeresDB not yet
        await asyncio.to_thread(first.wait, 10)
        second = _daemon(cluster)
        processes.append(second)
        await asyncio.to_thread(_until_healthy_cycle, second, 90)
        containers = await cluster.containers()
        assert sorted(c.name for c in containers) == sorted(
            cluster.container_name(n) for n in ("meta0", "db0", "db1")
        )
        assert (await cluster.container("meta0")).id == meta.id
        before = {c.name: (c.id, started_at(c)) for c in containers}
        os.kill(second.pid, signal.SIGKILL)  # healthy now
        await asyncio.to_thread(second.wait, 10)
        third = _daemon(cluster)
        processes.append(third)
        await asyncio.to_thread(_until_healthy_cycle, third, 60)
        after = {c.name: (c.id, started_at(c)) for c in await cluster.containers()}
        assert after == before
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                await asyncio.to_thread(process.wait, 30)
            if process.stderr is not None:
                process.stderr.close()


def _get_or_none(cluster: Cluster, node: str) -> object | None:
    """The node's container, or None when Docker says there is none (any other error is raised)."""
    try:
        return cluster.client.containers.get(cluster.container_name(node))
    except docker.errors.NotFound:
        return None


async def test_invalid_file_exits_2_before_touching_anything(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster()
    cluster.write("bogus = 1\n" + cluster.text)
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "ceres_supervisor", "run", "-c", str(cluster.path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert "bogus: unknown key" in result.stderr
    assert await cluster.containers() == []


async def test_after_a_die_event_the_engine_reports_the_container_exited(
    make_cluster: Callable[..., Cluster],
) -> None:
    """Right after `die`, Docker's container list can still say "running" with the same Status text
    (e.g. "Up About a minute"), so a cache keyed on it would hide the crash until a later cycle.
    The event invalidates the entry and the engine inspects, which waits for dockerd's exit handling."""
    cluster = make_cluster()
    supervisor = await cluster.start()
    await cluster.healthy(90)
    await cluster.stop()  # the containers stay; this test drives the engine itself
    engine = Engine(cluster.name)
    try:
        for _ in range(5):
            container = await cluster.container("db1")
            if container.status != "running":
                await asyncio.to_thread(container.start)
                cid = container.id
                await eventually(
                    lambda cid=cid: asyncio.to_thread(
                        lambda: cluster.client.containers.get(cid).status == "running"
                    ),
                    10,
                    "db1 running",
                )
            engine.invalidate(container.id)  # the `start` event does this in the daemon
            listed = {c.node: c for c in await engine.list_containers()}
            assert listed["db1"].state == "running"
            killed_ns = time.time_ns()
            kill_main_process(container)
            await asyncio.to_thread(_wait_for_die, cluster, container.id, killed_ns)
            engine.invalidate(container.id)  # what the supervisor does on every container event
            listed = {c.node: c for c in await engine.list_containers()}
            assert listed["db1"].state == "exited" and listed["db1"].exit_code == 137
    finally:
        engine.close()
    assert supervisor is not None


def _wait_for_die(cluster: Cluster, container_id: str, killed_ns: int) -> None:
    """This kill's `die` (not an earlier one the whole-second `since` would replay)."""
    since = killed_ns // 1_000_000_000 - 1
    for event in cluster.client.events(
        decode=True,
        since=since,
        until=since + 12,
        filters={"type": "container", "event": "die", "id": container_id},
    ):
        if int(event.get("timeNano", 0)) >= killed_ns:
            return
    raise AssertionError("no die event")


async def test_a_crash_is_restarted_from_the_event_not_the_next_tick(
    make_cluster: Callable[..., Cluster],
) -> None:
    """With a 30 s probe interval, only the `die` event can explain a restart within seconds.

    (Right after `die`, Docker's container list may still say "running"; the supervisor must
    re-inspect the container the event named instead of trusting that list.)"""
    cluster = make_cluster(supervisor={"probe_interval": "30s", "probe_timeout": "2s"})
    await cluster.start()
    await cluster.healthy(90)
    for round_ in range(3):  # the stale-list race does not show every time
        kill_main_process(await cluster.container("db1"))
        # A deadline well under the 30 s probe interval: only a restart waiting for the next tick misses it.
        await eventually(
            lambda r=round_: cluster.record("db1").restarts == r + 1, 10, f"restart {round_ + 1}"
        )
        await cluster.serving("db1", 60)


async def test_a_port_taken_by_another_process_is_a_reason_not_a_crash(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster()
    port = int(cluster.text.split('name = "db1"', 1)[1].split("http_port = ", 1)[1].split("\n", 1)[0])
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("0.0.0.0", port))
    squatter.listen()
    try:
        await cluster.start()
        await eventually(lambda: cluster.state("db0") == "healthy", 90, "db0 healthy")

        def reported() -> bool:
            view = cluster.view("db1")
            return view is not None and f"port {port} (http) already in use" in (view.reason or "")

        await eventually(reported, 30, "db1 reported with the taken port")
        assert _get_or_none(cluster, "db1") is None  # never started into a port it cannot bind
        assert cluster.task is not None and not cluster.task.done()
    finally:
        squatter.close()
    await cluster.healthy(60)  # the next retry succeeds once the port is free


async def test_one_crash_is_one_restart(make_cluster: Callable[..., Cluster]) -> None:
    """The cycle woken by our own start must not see the container as still exited (Docker's list
    lags) and start it a second time: one crash, one start action, restarts == 1."""
    cluster = make_cluster()
    supervisor = await cluster.start()
    await cluster.healthy(90)
    for round_ in range(1, 4):
        kill_main_process(await cluster.container("db0"))
        await eventually(lambda r=round_: cluster.record("db0").restarts >= r, 30, f"restart {round_}")
        await cluster.serving("db0", 60)
        starts = [e for e in supervisor.events if e.node == "db0" and e.type == "start"]
        assert len(starts) == round_, [(e.at, e.reason) for e in starts]
        assert cluster.record("db0").restarts == round_
