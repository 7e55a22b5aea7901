"""Answers that arrive in pieces are read whole (etcd's gateway, the probes), against a real aiohttp
server on loopback that writes each answer in two parts with a pause between them, as a loaded
machine or a large answer does. A stream that stays open is read up to its first line."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from ceres_supervisor.adapters import etcd
from ceres_supervisor.adapters.bodies import read_body
from ceres_supervisor.observation import probes

ROOT = b"/ceres-supervisor/c/nodes/"
RECORDS = {f"db{i}": {"state": "healthy", "reason": "x" * 400} for i in range(20)}
"""About 10 KB of JSON: the snapshot of a cluster's records."""


def range_answer() -> bytes:
    kvs = [
        {
            "key": base64.b64encode(ROOT + name.encode()).decode(),
            "value": base64.b64encode(json.dumps(doc).encode()).decode(),
            "create_revision": "2",
            "mod_revision": "3",
            "version": "1",
            "lease": "0",
        }
        for name, doc in RECORDS.items()
    ]
    return json.dumps({"header": {"revision": "9"}, "kvs": kvs, "count": str(len(kvs))}).encode()


async def in_two_parts(request: web.Request, body: bytes, then_hold: bool = False) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    await asyncio.sleep(0.2)  # the second segment comes later: the fault under test, not a wait
    await response.write(body[len(body) // 2 :])
    if then_hold:  # a stream that stays open after its first line
        await asyncio.Event().wait()
    await response.write_eof()
    return response


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def kv_range(request: web.Request) -> web.StreamResponse:
        return await in_two_parts(request, range_answer())

    async def keepalive(request: web.Request) -> web.StreamResponse:
        line = json.dumps({"result": {"ID": "7", "TTL": "10"}}).encode() + b"\n"
        return await in_two_parts(request, line, then_hold=True)

    async def clusters(request: web.Request) -> web.StreamResponse:
        return await in_two_parts(request, json.dumps({"status": "success", "data": list(RECORDS)}).encode())

    async def huge(request: web.Request) -> web.StreamResponse:
        return await in_two_parts(request, b"[" + b"1," * (1 << 20) + b"1]")

    app = web.Application()
    app.router.add_post("/v3/kv/range", kv_range)
    app.router.add_post("/v3/lease/keepalive", keepalive)
    app.router.add_get("/api/v1/clusters", clusters)
    app.router.add_get("/huge", huge)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_an_etcd_answer_in_two_parts_is_read_whole(server: str) -> None:
    async with aiohttp.ClientSession() as session:
        found = await etcd.Etcd(session, [server], 5.0).range(ROOT, prefix=True)
    assert found.revision == 9
    assert {kv.key.removeprefix(ROOT).decode(): json.loads(kv.value) for kv in found.kvs} == RECORDS


async def test_a_keepalive_stream_that_stays_open_is_read_to_its_first_line(server: str) -> None:
    async with aiohttp.ClientSession() as session:
        assert await asyncio.wait_for(etcd.Etcd(session, [server], 5.0).keepalive(7), 3) == 10


async def test_a_probe_answer_in_two_parts_is_read_whole(server: str) -> None:
    async with aiohttp.ClientSession() as session:
        status, doc = await probes._get_json(session, "GET", f"{server}/api/v1/clusters", 5.0)
    assert status == 200 and doc == {"status": "success", "data": list(RECORDS)}


async def test_an_answer_past_the_limit_is_refused_not_cut(server: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{server}/huge") as response:
        with pytest.raises(ValueError, match="larger than 65536 bytes"):
            await read_body(response.content, 65536)
