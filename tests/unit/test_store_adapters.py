"""The etcd client (adapters/etcd.py) and the snapshot reader (adapters/snapshots.py) against a real
etcd member's JSON gateway (the `etcd_member` fixture: the project's own etcd 3.5 binary, no
Docker), and two coordinators sharing it through them."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ceres_supervisor.adapters import etcd, snapshots
from ceres_supervisor.cluster.coordinator import Coordinator
from ceres_supervisor.cluster.view import Identity
from ceres_supervisor.model.errors import SlotRefused

from .conftest import free_port
from .test_coordinator import until

DEAD = f"http://127.0.0.1:{free_port()}"
"""A member that does not answer (nothing listens there)."""


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as one:
        yield one


@pytest.fixture
def prefix() -> bytes:
    """Keys of this test only (the member is shared by the session)."""
    return f"/unit/{uuid.uuid4().hex}/".encode()


async def test_keys_are_put_read_compared_and_deleted(
    etcd_member: str, session: aiohttp.ClientSession, prefix: bytes
) -> None:
    store = etcd.Etcd(session, [etcd_member], 5.0)
    first = await store.put(prefix + b"a", b"1")
    await store.put(prefix + b"b", b"\x00\xff binary")
    read = await store.range(prefix, prefix=True)
    assert [(kv.key, kv.value) for kv in read.kvs] == [
        (prefix + b"a", b"1"),
        (prefix + b"b", b"\x00\xff binary"),
    ]
    assert read.revision > first and read.kvs[0].create_revision == read.kvs[0].mod_revision == first
    assert (await store.range(prefix + b"missing")).kvs == ()
    ok, revision, ranges = await store.txn(
        [etcd.unchanged(prefix + b"a", first), etcd.absent(prefix + b"c")],
        [etcd.put_request(prefix + b"c", b"3"), {"request_range": etcd.range_request(prefix, True)}],
    )
    assert (
        ok
        and revision > read.revision
        and [kv.key for kv in ranges[0].kvs] == [prefix + k for k in (b"a", b"b", b"c")]
    )
    ok, _, ranges = await store.txn(
        [etcd.unchanged_since(prefix, first)],  # b and c were written after `first`
        [etcd.delete_request(prefix + b"a")],
        [{"request_range": etcd.range_request(prefix + b"a")}],
    )
    assert not ok and ranges[0].kvs[0].value == b"1"
    await store.delete(prefix + b"a")
    assert [kv.key for kv in (await store.range(prefix, prefix=True)).kvs] == [prefix + b"b", prefix + b"c"]


async def test_a_lease_is_granted_kept_alive_and_revoked_with_its_keys(
    etcd_member: str, session: aiohttp.ClientSession, prefix: bytes
) -> None:
    store = etcd.Etcd(session, [etcd_member], 5.0)
    lease = await store.grant(5)
    await store.put(prefix + b"agent", b"{}", lease)
    assert (await store.range(prefix + b"agent")).kvs[0].lease == lease
    assert 0 < await store.keepalive(lease) <= 5
    await store.revoke(lease)
    assert (await store.range(prefix + b"agent")).kvs == ()
    assert await store.keepalive(lease) == 0  # gone: the keepalive says so, it does not raise


async def test_a_member_that_does_not_answer_is_skipped_and_the_next_one_remembered(
    etcd_member: str, session: aiohttp.ClientSession, prefix: bytes
) -> None:
    store = etcd.Etcd(session, [DEAD, etcd_member], 2.0)
    await store.put(prefix + b"k", b"v")
    assert store.endpoint == etcd_member and store.other_endpoint(etcd_member) == DEAD
    assert store.other_endpoint("http://elsewhere") == DEAD
    lonely = etcd.Etcd(session, [DEAD], 2.0)
    with pytest.raises(etcd.EtcdUnavailable, match=f"{DEAD}: ClientConnectorError"):
        await lonely.range(prefix)
    with pytest.raises(ValueError, match="no etcd endpoint"):
        etcd.Etcd(session, [], 1.0)


async def test_an_error_answer_is_an_error_of_that_member(
    etcd_member: str, session: aiohttp.ClientSession
) -> None:
    store = etcd.Etcd(session, [etcd_member], 5.0)
    with pytest.raises(etcd.EtcdUnavailable, match="/v3/kv/range: "):
        await store.call("/v3/kv/range", {"key": "not base64!"})
    with pytest.raises(etcd.EtcdUnavailable, match="lease"):
        await store.put(b"/unit/x", b"v", lease=424242)  # a lease that does not exist


async def test_a_watch_delivers_changes_in_revision_order(
    etcd_member: str, session: aiohttp.ClientSession, prefix: bytes
) -> None:
    store = etcd.Etcd(session, [etcd_member], 5.0)
    start = await store.put(prefix + b"before", b"0")
    seen: list[tuple[bool, bytes, bytes]] = []

    async def follow() -> None:
        async for batch in store.watch(prefix, start + 1):
            seen.extend((e.deleted, e.kv.key, e.kv.value) for e in batch.events)

    watching = asyncio.ensure_future(follow())
    await store.put(prefix + b"a", b"1")
    await store.put(prefix + b"a", b"2")
    await store.delete(prefix + b"a")
    await until(lambda: len(seen) == 3, "three changes seen")
    watching.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watching
    assert seen == [(False, prefix + b"a", b"1"), (False, prefix + b"a", b"2"), (True, prefix + b"a", b"")]


async def test_a_watch_from_a_compacted_revision_says_so(
    etcd_member: str, session: aiohttp.ClientSession, prefix: bytes
) -> None:
    store = etcd.Etcd(session, [etcd_member], 5.0)
    old = await store.put(prefix + b"x", b"1")
    now = await store.put(prefix + b"x", b"2")
    await store.call("/v3/kv/compaction", {"revision": str(now)})
    with pytest.raises(etcd.Compacted, match=f"revision {old} was compacted"):
        async for _batch in store.watch(prefix, old):
            pass


# --- what a gateway may answer that etcd itself does not, in-process ---------------------------------------


@pytest.fixture
async def odd_gateway() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A gateway whose watch answers what the test sets: a status, lines, then the end."""
    answer: dict[str, Any] = {"status": 200, "lines": []}

    async def watch(request: web.Request) -> web.StreamResponse:
        if answer["status"] != 200:
            return web.Response(status=answer["status"], text="no")
        response = web.StreamResponse()
        await response.prepare(request)
        for line in answer["lines"]:
            await response.write(line.encode() + b"\n")
        return response

    async def grant(_request: web.Request) -> web.Response:
        return web.json_response({"TTL": "5"})  # no ID

    async def not_json(_request: web.Request) -> web.Response:
        return web.Response(text="[1, 2]")

    app = web.Application()
    app.router.add_post("/v3/watch", watch)
    app.router.add_post("/v3/lease/grant", grant)
    app.router.add_post("/v3/kv/range", not_json)
    server = TestServer(app)
    await server.start_server()
    yield str(server.make_url("")).rstrip("/"), answer
    await server.close()


@pytest.mark.parametrize(
    ("status", "lines", "error"),
    [
        (503, [], "watch answered HTTP 503"),
        (200, ['{"error": {"message": "etcdserver: no leader"}}'], "watch: {'error'"),
        (200, ['{"result": {"canceled": true, "cancel_reason": "no leader"}}'], "watch canceled: no leader"),
        (200, ["", '{"result": {"header": {"revision": "7"}, "created": true}}'], "watch stream ended"),
    ],
)
async def test_a_watch_that_cannot_go_on_says_why(
    odd_gateway: tuple[str, dict[str, Any]],
    session: aiohttp.ClientSession,
    status: int,
    lines: list[str],
    error: str,
) -> None:
    url, answer = odd_gateway
    answer.update(status=status, lines=lines)
    store = etcd.Etcd(session, [url], 2.0)
    batches = []
    with pytest.raises(etcd.EtcdUnavailable, match=error.replace("(", r"\(").replace("{", r"\{")):
        async for batch in store.watch(b"/p/", 1):
            batches.append(batch)
    assert batches == ([etcd.WatchBatch(7, ())] if "created" in "".join(lines) else [])


async def test_answers_that_are_not_etcd_s_are_errors(
    odd_gateway: tuple[str, dict[str, Any]], session: aiohttp.ClientSession
) -> None:
    url, _ = odd_gateway
    store = etcd.Etcd(session, [url], 2.0)
    with pytest.raises(etcd.EtcdError, match="lease grant returned no ID"):
        await store.grant(5)
    with pytest.raises(etcd.EtcdUnavailable, match="not an etcd answer"):
        await store.range(b"/p/")
    assert etcd.prefix_end(b"a\xff\xff") == b"b" and etcd.prefix_end(b"\xff") == b"\x00"


# --- snapshots -------------------------------------------------------------------------------------------


async def test_a_snapshot_is_the_member_s_database_checked_against_its_digest(
    etcd_member: str, session: aiohttp.ClientSession
) -> None:
    assert await snapshots.health(session, etcd_member, 5.0) is None
    data = b"".join([chunk async for chunk in snapshots.stream(session, etcd_member, 10.0)])
    assert len(data) > 4096 and hashlib.sha256(data[:-32]).digest() == data[-32:]  # as etcdctl writes it


async def test_a_member_that_is_not_healthy_or_does_not_answer_says_why(
    session: aiohttp.ClientSession,
) -> None:
    why = await snapshots.health(session, DEAD, 1.0)
    assert why is not None and why.startswith("ClientConnectorError")
    with pytest.raises(etcd.EtcdUnavailable, match=f"snapshot from {DEAD}: ClientConnectorError"):
        async for _chunk in snapshots.stream(session, DEAD, 1.0):
            pass


# --- two agents through the real store --------------------------------------------------------------------


async def test_two_coordinators_see_each_other_and_share_the_budget_through_etcd(etcd_member: str) -> None:
    cluster = f"unit{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession() as session:
        agents = []
        for host, nodes in (("127.0.0.1", ("db0",)), ("127.0.0.2", ("db1",))):
            coordinator = Coordinator(cluster, Identity(host, "t", f"{host}:5480"), 3.0, lambda: None)
            coordinator.identity.nodes = nodes
            store = etcd.Etcd(session, [DEAD, etcd_member], 2.0)
            tasks = [asyncio.ensure_future(coordinator.run(store))]

            async def cycling(c: Coordinator = coordinator) -> None:
                for _ in itertools.count():
                    c.progress(None)
                    await asyncio.sleep(0.1)

            tasks.append(asyncio.ensure_future(cycling()))
            coordinator.publish(
                {
                    n: {"name": n, "role": "ceresdb", "state": "healthy", "lease": {"held": True}}
                    for n in nodes
                }
            )
            agents.append((coordinator, tasks))
        a, b = agents[0][0], agents[1][0]
        try:
            await until(lambda: a.available and b.available, "both connected")
            await until(
                lambda: set(a.view.agents) == set(b.view.agents) == {"127.0.0.1", "127.0.0.2"},
                "both see both",
            )
            await until(lambda: "db1" in a.view.nodes and "db0" in b.view.nodes, "each sees the other's node")
            roles = {"db0": "ceresdb", "db1": "ceresdb"}
            a.budget(1, True, roles, {"db0"}, "h")
            b.budget(1, True, roles, {"db1"}, "h")
            await a.acquire("db0", "ceresdb", "unhealthy")
            await until(lambda: "db0" in b.view.slots, "b sees a's slot")
            b.budget(1, True, roles, {"db1"}, "h")
            with pytest.raises(SlotRefused):
                await b.acquire("db1", "ceresdb", "unhealthy")
            assert json.loads(json.dumps(b.view.slots["db0"]))["host"] == "127.0.0.1"
        finally:
            for coordinator, tasks in agents:
                await coordinator.close()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
