"""The probes (observation/probes.py) over real HTTP: meta's etcd is the real member of the
`etcd_member` fixture (the leader key and the shard locks written there as CeresMeta and CeresDB
write them, protobuf and all); CeresMeta's and CeresDB's HTTP APIs are small in-process servers
that answer what the test says."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ceres_supervisor.adapters import etcd
from ceres_supervisor.decisions.targets import Target
from ceres_supervisor.desired.containers import DesiredCluster
from ceres_supervisor.model.observed import ShardLock
from ceres_supervisor.observation import prober as probing
from ceres_supervisor.observation import probes
from testkit.helpers import free_ports

from .conftest import free_port
from .scenes import build
from .test_coordinator import until


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def text_field(number: int, value: str) -> bytes:
    data = value.encode()
    return varint(number << 3 | 2) + varint(len(data)) + data


def member(name: str, endpoint: str) -> bytes:
    """`metastoragepb.Member { string name = 1; uint64 id = 2; string endpoint = 3; }`"""
    return text_field(1, name) + varint(2 << 3) + varint(7) + text_field(3, endpoint)


class Server:
    """An HTTP server on a port of its own; `answers[path]` is (status, body) or a coroutine.

    Its port is taken when it is made (a socket bound to port 0, so no other process can take it
    meanwhile) unless `reserve` is false: then the port is only chosen, and bound when the server
    starts (a CeresDB node's port must be free until its container starts: preflight binds it)."""

    def __init__(self, reserve: bool = True) -> None:
        self.sock: socket.socket | None = None
        if reserve:
            self.sock = socket.socket()
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("127.0.0.1", 0))
            self.port = int(self.sock.getsockname()[1])
        else:
            self.port = free_port()
        self.answers: dict[str, Any] = {}
        self.asked: list[tuple[str, Any]] = []
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        self.asked.append((request.path, body))
        answer = self.answers.get(request.path, (404, {"error": "not found"}))
        if callable(answer):
            answer = await answer()
        status, doc = answer
        return web.Response(status=status, text=doc if isinstance(doc, str) else json.dumps(doc))

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        if self.sock is not None:
            await web.SockSite(self.runner, self.sock).start()
        else:
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self.sock is not None:
            self.sock.close()


class World:
    def __init__(
        self,
        desired: DesiredCluster,
        meta: Server,
        db: Server,
        store: etcd.Etcd,
        session: aiohttp.ClientSession,
    ) -> None:
        self.desired, self.meta_http, self.db_http, self.store, self.session = (
            desired,
            meta,
            db,
            store,
            session,
        )
        self.release = desired.spec.release
        self.cluster = desired.spec.cluster.name

    def node(self, name: str) -> Any:
        node = self.desired.node(name)
        assert node is not None
        return node


@pytest.fixture
async def world(etcd_member: str, tmp_path: Path) -> AsyncIterator[World]:
    """meta0 (its etcd: the real member; its HTTP API: a server here), meta1 (nothing answers) and
    db0 (its HTTP API: a server here), cluster name unique to the test."""
    meta, db = Server(), Server()
    client_port = int(etcd_member.rsplit(":", 1)[1])
    name = f"c{uuid.uuid4().hex[:8]}"
    spare = iter(free_ports(7))  # distinct: two separate picks once gave the same port twice
    text = f"""
[cluster]
name = "{name}"
state_dir = "/var/lib/ceres-supervisor"

[[meta.nodes]]
name = "meta0"
host = "127.0.0.1"
client_port = {client_port}
peer_port = {next(spare)}
http_port = {meta.port}

[[meta.nodes]]
name = "meta1"
host = "127.0.0.1"
client_port = {next(spare)}
peer_port = {next(spare)}
http_port = {next(spare)}

[[meta.nodes]]
name = "meta2"
host = "127.0.0.1"
client_port = {next(spare)}
peer_port = {next(spare)}
http_port = {next(spare)}

[[ceresdb.nodes]]
name = "db0"
host = "127.0.0.1"
http_port = {db.port}
"""
    desired = build(tmp_path, text)
    await meta.start()
    await db.start()
    async with aiohttp.ClientSession() as session:
        one = World(desired, meta, db, etcd.Etcd(session, [etcd_member], 5.0), session)
        yield one
        await one.store.delete(one.release.meta_leader_key.encode())
    await meta.close()
    await db.close()


async def slow() -> tuple[int, Any]:
    await asyncio.sleep(2)  # longer than the probe's timeout
    return 200, {"status": "ok"}


@pytest.mark.parametrize(
    ("answer", "ok", "detail"),
    [
        ((200, {"status": "ok"}), True, "GET / 200"),
        ((200, {"status": "starting"}), False, "GET / 200: {'status': 'starting'}"),
        ((503, "unavailable"), False, "GET / 503: unavailable"),
        (slow, False, "GET /: timed out"),
    ],
)
async def test_a_ceresdb_node_is_healthy_only_when_it_says_ok(
    world: World, answer: Any, ok: bool, detail: str
) -> None:
    world.db_http.answers["/"] = answer
    result = await probes.probe_ceresdb(world.session, world.node("db0"), 0.3, "run-1")
    assert (result.ok, result.detail, result.run_id) == (ok, detail, "run-1")


async def test_a_node_that_refuses_the_connection_says_so(world: World) -> None:
    await world.db_http.close()
    result = await probes.probe_ceresdb(world.session, world.node("db0"), 1.0)
    assert not result.ok and result.detail.startswith("GET /: cannot connect (")


async def test_a_meta_member_is_alive_by_its_health_route_and_its_etcd(world: World) -> None:
    path = world.release.meta_health_path
    world.meta_http.answers[path] = (200, {"status": "success"})
    alive = await probes.probe_member(world.session, world.node("meta0"), path, 2.0, "run-m")
    assert (alive.alive.ok, alive.etcd_ok, alive.alive.detail) == (True, True, f"GET {path} 200")
    world.meta_http.answers[path] = (500, "down")
    assert (await probes.probe_member(world.session, world.node("meta0"), path, 2.0)).alive.ok is False
    dead = await probes.probe_member(world.session, world.node("meta1"), path, 1.0)
    assert (dead.alive.ok, dead.etcd_ok) == (False, False) and "cannot connect" in dead.alive.detail


async def test_an_alive_member_whose_etcd_is_not_healthy_says_so(world: World, tmp_path: Path) -> None:
    path = world.release.meta_health_path
    etcd_down = Server()
    etcd_down.answers["/health"] = (503, {"health": "false"})
    world.meta_http.answers[path] = (200, {})
    await etcd_down.start()
    try:
        node = build(
            tmp_path / "x",
            f'[[meta.nodes]]\nname = "m"\nhost = "127.0.0.1"\nclient_port = {etcd_down.port}\n'
            f'http_port = {world.meta_http.port}\n[[ceresdb.nodes]]\nname = "d"\nhost = "127.0.0.1"\n',
        ).node("m")
        assert node is not None
        probed = await probes.probe_member(world.session, node, path, 2.0)
    finally:
        await etcd_down.close()
    assert (probed.alive.ok, probed.etcd_ok) == (True, False)
    assert probed.alive.detail == f"GET {path} 200; etcd /health not ok"


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        ((200, {"success": ["t1", "t2"], "failed": []}), "2 tables flushed, 0 failed"),
        ((200, {"success": "all"}), "HTTP 200: {'success': 'all'}"),
        ((500, "boom"), "HTTP 500: boom"),
    ],
)
async def test_a_flush_says_what_ceresdb_answered(world: World, answer: Any, said: str) -> None:
    world.db_http.answers["/debug/flush_memtable"] = answer
    assert await probes.flush_memtable(world.session, world.node("db0"), 2.0) == said


# --- the leader and the shard locks -----------------------------------------------------------------------------


def clusters(name: str) -> tuple[int, Any]:
    return 200, {"status": "success", "data": [{"Name": "other"}, {"Name": name}]}


async def test_the_leader_is_the_member_its_key_names_and_it_must_list_the_cluster(world: World) -> None:
    key = world.release.meta_leader_key.encode()
    members = [world.node("meta1"), world.node("meta0")]  # meta1 does not answer: the next one is asked
    leader = await probes.read_leader(world.session, members, key, world.cluster, 1.0)
    assert (leader.member, leader.detail) == (None, f"no leader key {key.decode()} yet")
    await world.store.put(key, b"\xff\xff not protobuf")
    leader = await probes.read_leader(world.session, members, key, world.cluster, 1.0)
    assert leader.detail == f"leader key {key.decode()} does not decode"
    await world.store.put(key, member("meta9", "http://10.9.9.9:2379"))
    leader = await probes.read_leader(world.session, members, key, world.cluster, 1.0)
    assert leader.detail == "leader meta9 at http://10.9.9.9:2379 is not a meta node of the file"
    endpoint = f"http://127.0.0.1:{world.node('meta0').ports['client']}"
    await world.store.put(key, member("meta0", endpoint))
    leader = await probes.read_leader(world.session, members, key, world.cluster, 1.0)
    assert (leader.member, leader.lists_cluster, leader.detail) == ("meta0", False, endpoint)
    world.meta_http.answers["/api/v1/clusters"] = clusters(world.cluster)
    leader = await probes.read_leader(world.session, members, key, world.cluster, 1.0)
    assert (leader.member, leader.lists_cluster) == ("meta0", True)


async def test_no_member_answering_is_said_as_such(world: World) -> None:
    leader = await probes.read_leader(
        world.session, [world.node("meta1")], b"/members/leader", world.cluster, 1.0
    )
    assert leader.member is None and leader.detail.startswith(
        "cannot read the leader key: meta1: cannot connect"
    )
    view = await probes.read_leases(
        world.session, [world.node("meta1")], None, "/ceresdb", world.cluster, 1.0
    )
    assert view.error is not None and view.error.startswith("cannot read shard locks: meta1: cannot connect")


SHARDS = {
    "status": "success",
    "data": {"NodeShards": [
        {"ShardInfo": {"ID": 0}, "ShardNode": {"NodeName": "127.0.0.1:8831"}},
        {"ShardInfo": {"ID": 1}, "ShardNode": {"NodeName": "127.0.0.1:8831"}},
    ]},
}  # fmt: skip


async def test_shard_locks_are_read_from_etcd_and_the_assignment_from_the_leader(world: World) -> None:
    root, meta0 = world.release.root_path, world.node("meta0")
    prefix = f"{root}/{world.cluster}/shards/".encode()
    lease = await world.store.grant(30)
    await world.store.put(prefix + b"0", text_field(1, "127.0.0.1:8831"), lease)
    await world.store.put(prefix + b"1", b"\xff", lease)  # not a ShardLockValue: not counted
    await world.store.put(prefix + b"x", text_field(1, "127.0.0.1:8831"), lease)  # not a shard id
    try:
        view = await probes.read_leases(world.session, [meta0], None, root, world.cluster, 2.0)
        assert view.locks == {0: ShardLock("127.0.0.1:8831", lease)}
        assert view.error == "no meta leader known: shard assignment unread"
        world.meta_http.answers["/api/v1/getNodeShards"] = (
            500,
            {"status": "error", "msg": "cluster not found"},
        )
        view = await probes.read_leases(world.session, [meta0], meta0, root, world.cluster, 2.0)
        assert view.error == "getNodeShards on meta0: HTTP 500: cluster not found"
        world.meta_http.answers["/api/v1/getNodeShards"] = (200, SHARDS)
        view = await probes.read_leases(world.session, [meta0], meta0, root, world.cluster, 2.0)
        assert (view.assigned, view.error) == ({"127.0.0.1:8831": (0, 1)}, None)
        assert world.meta_http.asked[-1] == ("/api/v1/getNodeShards", {"clusterName": world.cluster})
        await world.meta_http.close()
        view = await probes.read_leases(world.session, [meta0], meta0, root, world.cluster, 1.0)
        assert view.locks and (view.error or "").startswith("getNodeShards on meta0: cannot connect")
    finally:
        await world.store.revoke(lease)


# --- the prober --------------------------------------------------------------------------------------------


async def test_the_prober_keeps_the_latest_result_of_each_target_and_wakes_the_loop_on_a_change(
    world: World,
) -> None:
    path = world.release.meta_health_path
    world.meta_http.answers[path] = (200, {})
    world.meta_http.answers["/api/v1/clusters"] = clusters(world.cluster)
    world.db_http.answers["/"] = (200, {"status": "ok"})
    endpoint = f"http://127.0.0.1:{world.node('meta0').ports['client']}"
    await world.store.put(world.release.meta_leader_key.encode(), member("meta0", endpoint))
    woken: list[int] = []
    latencies: list[float] = []
    settings = probing.ProbeSettings(30.0, 2.0, path, world.cluster, world.release.root_path,
                                    world.release.meta_leader_key.encode())  # fmt: skip
    prober = probing.Prober(world.session, settings, lambda: woken.append(1), latencies.append)
    nodes = {n.name: n for n in world.desired.nodes}
    targets = [Target("leader", "leader"), Target("leases", "leases"), Target("meta", "meta0", run_id="m@1"),
               Target("meta", "meta1", fast=True), Target("ceresdb", "db0", run_id="d@1")]  # fmt: skip
    prober.update(nodes, targets, settings)
    running = asyncio.ensure_future(prober.run())
    try:
        await until(
            lambda: {"meta0", "meta1", "db0"} <= set(prober.probes) and prober.leader and prober.leases,
            "probed",
        )
        assert prober.probes["db0"].ok and prober.probes["db0"].run_id == "d@1"
        assert prober.meta["meta0"].etcd_ok and not prober.meta["meta1"].etcd_ok
        assert prober.leader is not None and (prober.leader.member, prober.leader.lists_cluster) == (
            "meta0",
            True,
        )
        assert woken and latencies
        assert [m.name for m in prober.members()] == ["meta0", "meta1", "meta2"]  # the healthy one first
        world.db_http.answers["/"] = (503, "stopping")
        prober.update(nodes, [*targets[:4], Target("ceresdb", "db0", fast=True, run_id="d@2")], settings)
        await until(
            lambda: prober.probes["db0"].run_id == "d@2" and not prober.probes["db0"].ok, "the new run probed"
        )
        prober.update(nodes, targets[:3], settings)  # meta1 and db0 no longer probed: their results go
        assert "db0" not in prober.probes and "meta1" not in prober.meta
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_a_leader_reading_wakes_the_loop_when_it_changed_or_a_start_waits_for_it(world: World) -> None:
    """Read every probe interval, the leader wakes the loop only at its first reading, when it
    changes, or when the plan made its target fast (a start waits for a reading at most
    LEADER_FRESH_S old): an idle cluster is not cycled once more per probe interval for nothing."""
    world.meta_http.answers["/api/v1/clusters"] = clusters(world.cluster)
    endpoint = f"http://127.0.0.1:{world.node('meta0').ports['client']}"
    await world.store.put(world.release.meta_leader_key.encode(), member("meta0", endpoint))
    woken: list[float] = []
    interval = probing.LEADER_FRESH_S + 0.1  # each reading older than "fresh" when the next comes
    settings = probing.ProbeSettings(interval, 2.0, world.release.meta_health_path, world.cluster,
                                     world.release.root_path, world.release.meta_leader_key.encode())  # fmt: skip
    prober = probing.Prober(world.session, settings, lambda: woken.append(time.monotonic()))
    nodes = {n.name: n for n in world.desired.nodes}
    prober.update(nodes, [Target("leader", "leader")], settings)
    running = asyncio.ensure_future(prober.run())
    try:
        readings: list[float] = []

        def read(count: int) -> bool:
            if prober.leader is not None and (not readings or prober.leader.at != readings[-1]):
                readings.append(prober.leader.at)
            return len(readings) >= count

        await until(lambda: read(3), "three readings", 10)
        assert len(woken) == 1, "only the first reading, nothing changed since"
        slow = probing.ProbeSettings(30.0, *list(settings.__dict__.values())[1:])
        prober.update(nodes, [Target("leader", "leader")], slow)
        await until(lambda: read(4), "a reading at the slow pace's start", 10)
        await until(lambda: time.monotonic() - readings[-1] > probing.LEADER_FRESH_S, "the reading aged")
        prober.update(nodes, [Target("leader", "leader", fast=True)], slow)  # a start waits for it
        await until(lambda: len(woken) == 2, "woken by the fresh reading")
        other = f"http://127.0.0.1:{world.node('meta1').ports['client']}"
        await world.store.put(world.release.meta_leader_key.encode(), member("meta1", other))
        await until(lambda: len(woken) == 3, "woken by another leader")
        assert prober.leader is not None and prober.leader.member == "meta1"
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


def test_protobuf_fields_refuse_what_is_malformed() -> None:
    assert probes.decode_member(member("m", "http://h:1")) == ("m", "http://h:1")
    assert probes.decode_member(text_field(1, "m")) is None  # no endpoint
    assert probes.decode_member(b"\x0a\x05ab") is None  # truncated field
    assert probes.decode_member(b"\x80") is None  # truncated varint
    assert probes.decode_shard_lock(b"\x0b") is None  # wire type 3: unsupported
    assert probes.decode_shard_lock(b"\x0a\x02\xff\xfe") is None  # not UTF-8
    assert probes.protobuf_fields(b"\x09" + b"\x00" * 8 + b"\x15" + b"\x00" * 4 + b"\x18\x05") == {3: 5}
    assert probes.member_by_endpoint([], "http://x:1") is None
