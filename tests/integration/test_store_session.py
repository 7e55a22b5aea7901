"""The agent's session with the store (coordination.py) against a real etcd: the one embedded in a
meta stand-in. A stall shorter than the lease is not an outage; a longer one is, and it ends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import docker
import pytest

from ceres_supervisor.adapters import etcd
from ceres_supervisor.cluster.coordinator import Coordinator
from ceres_supervisor.cluster.view import Identity, prefix
from testkit.standins import StandIns, cluster_toml

from .conftest import eventually

CLUSTER = "storeSession"


@pytest.fixture
def store(
    docker_client: docker.DockerClient, tmp_path: Path
) -> Iterator[tuple[str, docker.models.containers.Container]]:
    """(the client URL, the container) of one meta stand-in, removed at the end."""
    standins = StandIns(docker_client, tmp_path)
    try:
        spec = standins.load(cluster_toml(meta=1, db=1, version="1.2.7"))
        container = standins.run(spec, "meta0")
        yield f"http://127.0.0.1:{spec.meta.nodes[0].client_port}", container
    finally:
        standins.cleanup()


def node_doc(state: str) -> dict[str, object]:
    return {
        "name": "db0",
        "role": "ceresdb",
        "state": state,
        "reason": None,
        "lease": {"held": True, "shards": [0]},
    }


@dataclass
class Agent:
    """A Coordinator session running against the store, a second client to read what it wrote,
    and every (available, detail) the session went through once its first record was written."""

    coordinator: Coordinator
    reader: etcd.Etcd
    seen: list[tuple[bool, str]]

    async def record(self, node: str, state: str | None = None) -> dict[str, object] | None:
        found = await self.reader.range(prefix(CLUSTER) + f"nodes/{node}".encode())
        if not found.kvs:
            return None
        doc = json.loads(found.kvs[0].value)
        return doc if state is None or doc.get("state") == state else None  # type: ignore[no-any-return]


@asynccontextmanager
async def agent(url: str, ttl_s: float) -> AsyncIterator[Agent]:
    """Connected, db0 published healthy and written; the session closed at the end."""
    seen: list[tuple[bool, str]] = []
    coordinator = Coordinator(
        CLUSTER,
        Identity(host="127.0.0.1", version="test", listen="127.0.0.1:1"),
        ttl_s,
        lambda: seen.append((coordinator.available, coordinator.detail)),
    )

    async def cycling() -> None:  # the daemon's loop, which the lease is tied to
        while True:
            coordinator.progress(None)
            await asyncio.sleep(0.2)

    async with aiohttp.ClientSession() as session:
        a = Agent(coordinator, etcd.Etcd(session, [url], 2.0), seen)
        task = asyncio.create_task(coordinator.run(etcd.Etcd(session, [url], 2.0)))
        loop = asyncio.create_task(cycling())
        try:
            await eventually(lambda: coordinator.available, 60, "the agent connected to the store")
            coordinator.publish({"db0": node_doc("healthy")})
            await eventually(lambda: a.record("db0"), 10, "the first record written")
            seen.clear()  # from here on, every change of the session's state is recorded
            yield a
        finally:
            loop.cancel()
            await coordinator.close()
            task.cancel()
            await asyncio.gather(task, loop, return_exceptions=True)


async def test_a_stall_shorter_than_the_lease_keeps_the_agent_available_and_loses_no_write(
    store: tuple[str, docker.models.containers.Container],
) -> None:
    url, container = store
    async with agent(url, 30) as a:
        container.pause()  # every call now times out (2 s), as on a member that stopped answering
        try:
            a.coordinator.publish({"db0": node_doc("unhealthy")})
            await eventually(
                lambda: a.coordinator.retries >= 1, 15, "a write that failed and will be tried again"
            )
        finally:
            container.unpause()
        doc = await eventually(lambda: a.record("db0", "unhealthy"), 15, "the write made during the stall")
        assert doc["state"] == "unhealthy"
        assert a.coordinator.available and all(available for available, _ in a.seen), a.seen


async def test_a_stall_longer_than_the_lease_allows_is_unavailable_then_the_records_come_back(
    store: tuple[str, docker.models.containers.Container],
) -> None:
    url, container = store
    async with agent(url, 3) as a:
        container.pause()  # a 3 s lease kept alive every 1 s: no room to wait, the agent says so
        try:
            await eventually(lambda: not a.coordinator.available, 15, "the session declared unavailable")
            # read while it lasts: once etcd answers it reconnects at once. Whichever comes first
            # says it: the view unconfirmed for a TTL, or the session's calls failing.
            detail = a.coordinator.why_unavailable
        finally:
            container.unpause()
        assert any(why in detail for why in ("s old", "timed out", "expired", "did not bring back")), detail
        await eventually(lambda: a.coordinator.available, 30, "the session back")
        await eventually(lambda: a.record("db0", "healthy"), 15, "the node record written again")
