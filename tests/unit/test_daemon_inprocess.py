"""The whole daemon in-process (daemon/app.py, daemon/loop.py): the real Supervisor, its loop,
executor, observer, prober, coordinator, store synchronisation and operations, against the Docker
Engine of tests/unit/fakedocker.py, the real etcd member as meta's etcd, and small HTTP servers as
CeresMeta's and CeresDB's APIs (a CeresDB node's server runs while its container runs). Waits
have deadlines; nothing is timed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ceres_supervisor.adapters import etcd, systemd
from ceres_supervisor.daemon.app import Supervisor
from ceres_supervisor.desired import loading, locality
from ceres_supervisor.surfaces import status_document

from .conftest import free_port
from .fakedocker import FakeDocker
from .test_daemon_parts import Systemd
from .test_probes_http import Server, member

DEADLINE_S = 30.0


def file_text(
    tmp_path: Path, name: str, client_port: int, meta_http: int, db_http: int, extra: str = ""
) -> str:
    return f"""
[cluster]
name = "{name}"
state_dir = "{tmp_path}/state"

[supervisor]
listen = "unix:{tmp_path}/api.sock"
probe_interval = "1s"
probe_timeout = "500ms"
{extra}
[[meta.nodes]]
name = "meta0"
host = "127.0.0.1"
client_port = {client_port}
peer_port = {free_port()}
http_port = {meta_http}

[[ceresdb.nodes]]
name = "db0"
host = "127.0.0.1"
grpc_port = {free_port()}
http_port = {db_http}
mysql_port = {free_port()}
"""


class World:
    """Docker, meta and CeresDB as the daemon sees them, and the daemon itself."""

    def __init__(self, tmp_path: Path, etcd_member: str, extra: str = "") -> None:
        self.tmp_path = tmp_path
        self.etcd_member = etcd_member
        self.cluster = f"c{uuid.uuid4().hex[:8]}"
        self.docker = FakeDocker(str(tmp_path / "docker.sock"))
        self.meta_http = Server()
        self.db_http = Server(reserve=False)  # bound when db0's container starts
        self.db_http.answers.update(
            {"/": (200, {"status": "ok"}), "/debug/flush_memtable": (200, {"success": ["t"], "failed": []})}
        )
        self.path = tmp_path / "cluster.toml"
        self.client_port = int(etcd_member.rsplit(":", 1)[1])
        self.path.write_text(
            file_text(tmp_path, self.cluster, self.client_port, self.meta_http.port, self.db_http.port, extra)
        )
        self.loaded = loading.load(self.path)
        release = self.loaded.spec.release
        self.meta_http.answers.update({
            release.meta_health_path: (200, {"status": "success"}),
            "/api/v1/clusters": (200, {"status": "success", "data": [{"Name": self.cluster}]}),
            "/api/v1/getNodeShards": (200, {"status": "success", "data": {"NodeShards": None}}),
        })  # fmt: skip
        self.leader_key = release.meta_leader_key.encode()
        self.systemd = Systemd(tmp_path / "notify")
        self.notified: list[str] = []
        self.supervisor: Supervisor
        self.task: asyncio.Task[int] | None = None
        self.docker.on_start = self._container_started
        self.docker.on_stop = self._container_stopped

    async def _container_started(self, c: dict[str, Any]) -> None:
        if c["Config"]["Labels"].get("io.ceres-supervisor.node") == "db0":
            await self.db_http.start()

    async def _container_stopped(self, c: dict[str, Any]) -> None:
        if c["Config"]["Labels"].get("io.ceres-supervisor.node") == "db0":
            await self.db_http.close()

    async def start(self) -> None:
        await self.docker.start()
        await self.meta_http.start()
        async with etcd_client(self.etcd_member) as store:
            await store.put(self.leader_key, member("meta0", f"http://127.0.0.1:{self.client_port}"))
        place = locality.Locality(None, {"127.0.0.1": True})
        self.supervisor = Supervisor(
            self.loaded, place, config_path=str(self.path), docker_url=f"unix://{self.docker.socket_path}",
            notifier=systemd.Notifier({"NOTIFY_SOCKET": str(self.tmp_path / "notify")}),
        )  # fmt: skip
        meta0 = self.supervisor.desired.node("meta0")
        assert meta0 is not None  # meta0 runs already (its client port is the etcd member's): adopted
        self.meta0 = self.docker.add(meta0.container.name, meta0.container.image, meta0.container.labels)
        self.task = asyncio.ensure_future(self.supervisor.run(None, handle_signals=False))

    def doc(self) -> dict[str, Any]:
        snap = self.supervisor.snapshot
        return status_document.document(snap, (snap.reload.ok, snap.reload.error, snap.reload.at))

    def node(self, name: str) -> dict[str, Any]:
        return next(n for n in self.doc()["nodes"] if n["name"] == name)

    def drained(self) -> list[str]:
        """What the daemon told systemd so far (read as systemd reads it: its queue holds ten)."""
        self.notified += self.systemd.received()
        return self.notified

    async def until(self, predicate: Any, what: str) -> None:
        async with asyncio.timeout(DEADLINE_S):
            while True:
                self.drained()
                if self.task is not None and self.task.done():
                    raise AssertionError(f"the daemon ended while waiting for {what}: {self.task.result()}")
                if predicate():
                    return
                await asyncio.sleep(0.02)

    async def close(self) -> None:
        if self.task is not None and not self.task.done():
            self.supervisor.request_stop()
            async with asyncio.timeout(DEADLINE_S):
                await asyncio.gather(self.task, return_exceptions=True)
        async with etcd_client(self.etcd_member) as store:
            await store.delete(self.leader_key)
        await self.db_http.close()
        await self.meta_http.close()
        await self.docker.stop()
        self.systemd.sock.close()


class etcd_client:  # noqa: N801 (used as a context manager)
    def __init__(self, url: str) -> None:
        self.url = url

    async def __aenter__(self) -> etcd.Etcd:
        import aiohttp  # noqa: PLC0415

        self.session = aiohttp.ClientSession()
        return etcd.Etcd(self.session, [self.url], 5.0)

    async def __aexit__(self, *_exc: object) -> None:
        await self.session.close()


@pytest.fixture
async def world(tmp_path: Path, etcd_member: str) -> AsyncIterator[World]:
    one = World(tmp_path, etcd_member)
    await one.start()
    yield one
    await one.close()


def db0_id(world: World) -> str:
    return next(
        cid
        for cid, c in world.docker.containers.items()
        if c["Config"]["Labels"].get("io.ceres-supervisor.node") == "db0"
    )


async def test_the_daemon_starts_the_cluster_restarts_a_crash_reloads_restarts_by_plan_and_stops(
    world: World,
) -> None:
    s = world.supervisor
    # Cold start: meta0 adopted as it runs, db0 created once meta is ready, then healthy.
    await world.until(lambda: s.snapshot.cluster_state == "healthy", "the cluster healthy")
    assert world.meta0 in world.docker.containers and world.node("meta0")["container_id"] == world.meta0
    created = [call for call in world.docker.calls if call == "POST /containers/create"]
    assert len(created) == 1 and world.node("db0")["state"] == "healthy"
    await world.until(lambda: any(m.startswith("READY=1") for m in world.drained()), "READY=1")
    assert s.ready.is_set() and s.engine_error is None and s.leader() == "meta0"

    # A crash is restarted at once and counted.
    first = db0_id(world)
    await world.docker.kill(first, 137)
    await world.until(lambda: any(e.type == "die" and e.node == "db0" for e in s.events), "the die event")
    await world.until(
        lambda: world.node("db0")["restarts"] == 1 and world.node("db0")["state"] == "healthy", "db0 back"
    )
    assert db0_id(world) == first  # started again, not recreated
    assert world.node("db0")["last_exit"]["code"] == 137

    # A reload: a supervisor-only change applies without touching containers; a broken file is refused.
    text = world.path.read_text()
    world.path.write_text(text.replace('probe_interval = "1s"', 'probe_interval = "2s"'))
    applied = await s.request_reload()
    assert applied.ok and s.spec.supervisor.probe_interval == 2.0 and db0_id(world) == first
    world.path.write_text(text.replace(f'name = "{world.cluster}"', 'name = "another"'))
    refused = await s.request_reload()
    assert not refused.ok and "cluster.name" in (refused.error or "") and s.spec.cluster.name == world.cluster
    world.path.write_text(text)
    assert (await s.request_reload()).ok

    # A planned restart: flushed, stopped, started, healthy again; an operation with its steps.
    op = await s.operations.begin("restart", ["db0"], "cli", s.spawn)
    await world.until(lambda: op.outcome is not None, "the planned restart ends")
    assert (op.outcome, op.error) == ("ok", None), op.steps
    texts = [text for _at, text in op.steps]
    assert "db0: flush_memtable: 1 tables flushed, 0 failed" in texts and texts[-1] == "done: ok"
    assert ("/debug/flush_memtable", None) in world.db_http.asked
    assert s.metrics.restarts_by_reason()[("db0", "planned")] == 1

    # A pause holds on this machine (and the store): the node is paused, never restarted.
    assert await s.pause(frozenset({"db0"}), True, False) == "every machine"
    await world.until(lambda: world.node("db0")["state"] == "paused", "db0 paused")
    await s.pause(frozenset({"db0"}), False, False)
    await world.until(lambda: world.node("db0")["state"] == "healthy", "db0 resumed")

    # A stop leaves the containers running (on_exit = "leave").
    world.drained()
    s.request_stop()
    async with asyncio.timeout(DEADLINE_S):
        assert await world.task == 0  # type: ignore[misc]
    assert (
        world.docker.containers[first]["State"]["Running"]
        and world.docker.containers[world.meta0]["State"]["Running"]
    )
    assert "STOPPING=1" in world.drained()
    assert any(m.startswith("RELOADING=1\nMONOTONIC_USEC=") for m in world.notified)


async def test_while_docker_is_away_the_cluster_is_unknown_and_then_followed_again(world: World) -> None:
    s = world.supervisor
    await world.until(lambda: s.snapshot.cluster_state == "healthy", "the cluster healthy")
    await world.docker.stop()
    await world.until(lambda: s.snapshot.cluster_state == "unknown", "the cluster unknown")
    assert "Docker Engine unavailable" in (s.engine_error or "") and world.doc()["engine"]["ok"] is False
    await world.docker.start()
    await world.until(lambda: s.snapshot.cluster_state == "healthy", "the cluster healthy again")


async def test_on_exit_stop_stops_the_containers_ceresdb_first(tmp_path: Path, etcd_member: str) -> None:
    one = World(tmp_path, etcd_member, extra='on_exit = "stop"\nstop_timeout = "2s"\n')
    await one.start()
    try:
        await one.until(lambda: one.supervisor.snapshot.cluster_state == "healthy", "the cluster healthy")
        db0 = db0_id(one)
        one.supervisor.request_stop()
        async with asyncio.timeout(DEADLINE_S):
            assert await one.task == 0  # type: ignore[misc]
        stops = [call for call in one.docker.calls if call.endswith("/stop")]
        assert stops == [f"POST /containers/{db0}/stop", f"POST /containers/{one.meta0}/stop"]
        assert not any(c["State"]["Running"] for c in one.docker.containers.values())
    finally:
        await one.close()
