"""Readings that decide something are checked: meta's `getNodeShards` answer is either a
well-formed success or an error of that reading, never an empty success (an empty map would say
"no shards assigned", which makes every node count as available)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from ceres_supervisor.desired import containers, loading
from ceres_supervisor.observation import probes
from ceres_supervisor.observation.probes import ReadingError, node_shards

from .conftest import BASE

OK = {
    "status": "success",
    "data": {
        "ClusterTopologyVersion": 3,
        "NodeShards": [
            {"ShardInfo": {"ID": 3, "Role": 1, "Version": 0}, "ShardNode": {"ID": 3, "NodeName": "h:8831"}},
            {"ShardInfo": {"ID": 0, "Role": 1, "Version": 0}, "ShardNode": {"ID": 0, "NodeName": "h:8831"}},
            {"ShardInfo": {"ID": 1, "Role": 1, "Version": 0}, "ShardNode": {"ID": 1, "NodeName": "h:8832"}},
        ],
    },
}
ERROR = {"status": "error", "error": "(#500)get node shards, cause:<nil>", "msg": "cluster not found"}


def test_a_success_maps_each_endpoint_to_its_shards() -> None:
    assert node_shards(200, OK) == {"h:8831": (0, 3), "h:8832": (1,)}


@pytest.mark.parametrize("data", [{"ClusterTopologyVersion": 0, "NodeShards": []}, {"NodeShards": None}])
def test_a_cluster_without_topology_assigns_nothing(data: object) -> None:
    assert node_shards(200, {"status": "success", "data": data}) == {}


@pytest.mark.parametrize(
    ("status", "body", "words"),
    [
        (500, ERROR, "HTTP 500: cluster not found"),
        (200, ERROR, "HTTP 200: cluster not found"),  # the envelope says error whatever the status
        (502, "<html>bad gateway</html>", "HTTP 502: <html>bad gateway</html>"),
        (200, None, "HTTP 200"),
        (200, {"status": "success"}, "without data.NodeShards"),
        (200, {"status": "success", "data": {"NodeShards": {"0": 1}}}, "without data.NodeShards"),
        (200, {"status": "success", "data": {"NodeShards": [{"ShardInfo": {"ID": "0"}}]}}, "malformed entry"),
        (
            200,
            {
                "status": "success",
                "data": {"NodeShards": [{"ShardInfo": {"ID": True}, "ShardNode": {"NodeName": "h:1"}}]},
            },
            "malformed",
        ),
    ],
)
def test_anything_but_a_well_formed_success_is_an_error_of_the_reading(
    status: int, body: object, words: str
) -> None:
    with pytest.raises(ReadingError, match=words):
        node_shards(status, body)


def lock_range() -> bytes:
    """etcd's gateway answer with one shard lock naming h:8831 (protobuf ShardLockValue)."""
    value = b"\x0a" + bytes([len(b"127.0.0.1:8831")]) + b"127.0.0.1:8831"
    kv = {
        "key": base64.b64encode(b"/ceresdb/defaultCluster/shards/00000000000000000000").decode(),
        "value": base64.b64encode(value).decode(),
        "lease": "7",
    }
    return json.dumps({"header": {"revision": "5"}, "kvs": [kv]}).encode()


@pytest.fixture
async def meta(
    unused_tcp_port_factory: Callable[[], int],
) -> AsyncIterator[tuple[list[int], list[tuple[int, object]]]]:
    """One meta member on loopback: etcd's range on its client port, getNodeShards on its HTTP port
    answering whatever the test puts in `answers` (status, body)."""
    answers: list[tuple[int, object]] = []

    async def kv_range(_request: web.Request) -> web.Response:
        return web.Response(body=lock_range(), content_type="application/json")

    async def get_node_shards(_request: web.Request) -> web.Response:
        status, body = answers[-1]
        return web.Response(status=status, text=json.dumps(body), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v3/kv/range", kv_range)
    app.router.add_post("/api/v1/getNodeShards", get_node_shards)
    runner = web.AppRunner(app)
    await runner.setup()
    ports = [unused_tcp_port_factory() for _ in range(3)]
    for port in ports[:2]:
        await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield ports, answers
    finally:
        await runner.cleanup()


async def test_a_500_from_get_node_shards_is_an_error_not_an_empty_assignment(
    tmp_path: Path, meta: tuple[list[int], list[tuple[int, object]]]
) -> None:
    (client, http, peer), answers = meta
    text = BASE.replace(
        'name = "meta0"\nhost = "127.0.0.1"',
        f'name = "meta0"\nhost = "127.0.0.1"\nclient_port = {client}\nhttp_port = {http}\npeer_port = {peer}',
    )
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    desired = containers.build(loading.load(path).spec, lambda _ref: "", is_local=lambda _h: True)
    member = desired.meta[0]
    async with aiohttp.ClientSession() as session:
        answers.append((200, OK))
        good = await probes.read_leases(session, [member], member, "/ceresdb", "defaultCluster", 2.0)
        assert good.error is None and good.assigned == {"h:8831": (0, 3), "h:8832": (1,)}
        assert good.locks[0].holder == "127.0.0.1:8831"
        answers.append((500, ERROR))
        bad = await probes.read_leases(session, [member], member, "/ceresdb", "defaultCluster", 2.0)
        assert bad.error == "getNodeShards on meta0: HTTP 500: cluster not found" and bad.assigned == {}
        leaderless = await probes.read_leases(session, [member], None, "/ceresdb", "defaultCluster", 2.0)
        assert leaderless.error is not None and "no meta leader" in leaderless.error


def test_debug_shards_maps_each_shard_to_its_status() -> None:
    body = [
        {"id": 3, "role": "Leader", "version": 1, "status": "Opening"},
        {"id": 0, "role": "Leader", "version": 4, "status": "Ready"},
    ]
    assert probes.debug_shards(200, body) == {3: "Opening", 0: "Ready"}
    with pytest.raises(ReadingError):
        probes.debug_shards(404, {"code": 404, "message": "NOT_FOUND"})
    with pytest.raises(ReadingError):
        probes.debug_shards(200, [{"id": "3", "status": "Ready"}])
