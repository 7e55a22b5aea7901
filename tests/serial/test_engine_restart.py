"""A restarted Docker Engine is followed: restart the dockerd that scripts/ensure-docker.sh
started while a 1 meta + 2 CeresDB cluster runs. The containers die with it; once it is back every
node is healthy again with exactly one container per node, and the events say why.

Runs alone (make test's serial phase): every other container on the machine dies with dockerd.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import docker

from testkit.helpers import wait_until

from ..integration.conftest import Cluster, eventually

PROJECT = Path(__file__).resolve().parents[2]


def dockerd_pid() -> int | None:
    found = subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True, check=False)
    return int(found.stdout.split()[0]) if found.returncode == 0 and found.stdout.split() else None


def engine_answers() -> bool:
    try:
        client = docker.from_env(timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except docker.errors.DockerException:
        return False


async def test_a_restarted_docker_engine_is_followed(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(meta=1, db=2)
    supervisor = await cluster.start()
    await cluster.healthy(90)
    before = {c.labels["io.ceres-supervisor.node"]: c.id for c in await cluster.containers()}
    pid = dockerd_pid()
    assert pid is not None, (
        "no dockerd process: this scenario restarts the one scripts/ensure-docker.sh starts"
    )
    os.kill(pid, signal.SIGTERM)
    await asyncio.to_thread(wait_until, lambda: dockerd_pid() is None, 60, "dockerd gone")
    await eventually(
        lambda: cluster.cluster_state() == "unknown", 30, "the cluster state unknown while Docker is away"
    )
    await asyncio.to_thread(subprocess.run, [str(PROJECT / "scripts" / "ensure-docker.sh")], check=True)
    await asyncio.to_thread(wait_until, engine_answers, 60, "dockerd answering again")
    await cluster.healthy(120)
    client = docker.from_env(timeout=30)
    try:
        after = client.containers.list(
            all=True, filters={"label": f"io.ceres-supervisor.cluster={cluster.name}"}
        )
        by_node: dict[str, list[str]] = {}
        for c in after:
            by_node.setdefault(c.labels["io.ceres-supervisor.node"], []).append(c.id)
        assert {n: len(ids) for n, ids in by_node.items()} == {"meta0": 1, "db0": 1, "db1": 1}
        assert {n: ids[0] for n, ids in by_node.items()} == before  # started again, not recreated
        assert all(c.status == "running" for c in after)
    finally:
        client.close()
    kinds = [(e.node, e.type) for e in supervisor.events]
    assert (None, "engine_restarted") in kinds
    assert {n for n, t in kinds if t == "engine_restarted" and n} == {"meta0", "db0", "db1"}
    assert not [e for e in supervisor.events if e.type == "died"], (
        "an engine restart is not the nodes' failure"
    )
