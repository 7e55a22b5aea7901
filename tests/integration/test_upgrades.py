"""Upgrades as planned operations, on the stand-ins: the real daemon, real Docker Engines.

Three scenarios, on the versions where the behaviour differs, judged from Docker's own events
(testkit.dockerevents) and from the shard locks in etcd, read by the test itself:
- rolling 1.2.4 -> 1.2.5 (3 meta + 2 CeresDB): meta followers, the leader, then CeresDB one at a
  time, each flushed first and back with its shards before the next one stops;
- 1.2.6 -> 1.2.7 -> 2.0.0, one cluster: meta all together, once (the leader key moved), CeresDB
  never restarted meanwhile; then HoraeDB 2.0.0 keeping the 1.x data (refused without
  keep_ceresdb_data): meta together, then every CeresDB node together, the keys under /ceresdb kept;
- two machines, an extra Docker Engine each (testkit.machines), one agent per machine: the second
  lacks the target image, nothing stops anywhere and the upgrade says which machine lacks which
  image; once it has it the upgrade goes, and the agent driving it, SIGKILLed mid-way, comes back
  and the upgrade resumes where the containers stand.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import docker
import pytest

from testkit.dockerevents import DockerEvents
from testkit.helpers import (
    cluster_view_state,
    etcd_range,
    free_ports,
    http_json,
    save_logs,
    shard_lock_leases,
    wait_until,
)
from testkit.machines import Engines
from testkit.standins import IMAGE_PREFIX, FastTicks, cluster_toml

from ..conftest import failed
from .conftest import FAST, Cluster, Daemon, eventually

RELEASE_LABEL = "io.ceres-supervisor.release"


class ShardWatch:
    """The shard locks in etcd, read every 0.2 s in a thread: when each node holds its shards again."""

    def __init__(self, client_urls: list[str], root: str, cluster: str) -> None:
        self.urls, self.root, self.cluster = client_urls, root, cluster
        self.samples: list[tuple[float, dict[int, tuple[str, int]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shard-watch", daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.wait(0.2):
            try:
                locks = shard_lock_leases(self.urls[i % len(self.urls)], self.root, self.cluster)
            except (OSError, AssertionError, ValueError):
                i += 1  # that member is being recreated: ask another
                continue
            self.samples.append((time.time(), locks))

    def __enter__(self) -> ShardWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def down_until(self, endpoint: str, after: float) -> float | None:
        """The last reading after `after` at which the node did not hold yet, under leases it did not
        hold at `after`, every shard it held then (it was surely down until then); None when it never
        held them again."""
        before = [locks for at, locks in self.samples if at <= after]
        assert before, f"no shard locks read before {after}"
        held = {s: lease for s, (holder, lease) in before[-1].items() if holder == endpoint}
        assert held, f"{endpoint} held no shard before {after}"
        last = after
        for at, locks in self.samples:
            if at <= after:
                continue
            if all(locks.get(s, ("", 0))[0] == endpoint and locks[s][1] != old for s, old in held.items()):
                return last
            last = at
        return None


def upgraded(text: str, old: str, new: str) -> str:
    return text.replace(f'version = "{old}"', f'version = "{new}"').replace(f':{old}"', f':{new}"')


def to_horaedb(text: str, keep: bool) -> str:
    text = upgraded(text, "1.2.7", "2.0.0").replace('flavor = "ceresdb"', 'flavor = "horaedb"')
    text = text.replace("ceresmeta-server:", "horaemeta-server:").replace(
        "ceresdb-server:", "horaedb-server:"
    )
    return text.replace("[cluster]\n", "[cluster]\nkeep_ceresdb_data = true\n") if keep else text


async def healthy_with_shards(cluster: Cluster, timeout_s: float = 120) -> None:
    await cluster.healthy(timeout_s)
    dbs = [n.name for n in cluster.spec.ceresdb.nodes]
    await eventually(
        lambda: all((v := cluster.view(n)) and v.lease and v.lease.held for n in dbs),
        timeout_s,
        f"{dbs} holding their shards",
    )


def shard_holders(cluster: Cluster) -> dict[int, str] | None:
    """shard -> the endpoint holding its lock, once meta's cluster view is Stable and every shard
    is locked (read from the first member that answers); None before."""
    spec = cluster.spec
    for m in spec.meta.nodes:
        url = f"http://{m.host}:{m.client_port}"
        try:
            if cluster_view_state(url) != "Stable":
                return None
            locks = shard_lock_leases(url, "/ceresdb", cluster.name)
        except (OSError, AssertionError, ValueError):
            continue
        return (
            {s: holder for s, (holder, _lease) in locks.items()}
            if len(locks) == spec.meta.shard_total
            else None
        )
    return None


async def started_with_shards_everywhere(make_cluster: Any, tries: int = 3, **kwargs: Any) -> Cluster:
    """A started cluster, healthy, each of whose CeresDB nodes holds shards: the precondition of a
    test that watches every node come back with its own. Meta fixes its topology at its first
    assignment, over the nodes its leader has heard from by then (a node whose heartbeats went to a
    follower that had no leader yet is left out) and, at 1.2.4, by a crc32 ring that can give one
    node all 8 shards: real outcomes (docs/real-servers.md, section 7), not the subject of these
    tests. Such a cluster is taken down and another made, `tries` times at most."""
    seen = []
    for _ in range(tries):
        cluster = make_cluster(**kwargs)
        await cluster.start()
        await cluster.healthy(120)
        holders = await eventually(partial(shard_holders, cluster), 120, "every shard assigned and locked")
        empty = [
            n.name for n in cluster.spec.ceresdb.nodes if f"{n.host}:{n.grpc_port}" not in holders.values()
        ]
        if not empty:
            await healthy_with_shards(cluster)
            return cluster
        seen.append(f"{cluster.name}: {empty} without shards ({holders})")
        await cluster.stop()
        for container in await cluster.containers():
            await asyncio.to_thread(container.remove, force=True)
    raise AssertionError(f"no cluster with shards on every CeresDB node in {tries} tries: {seen}")


def upgrade_doc(cluster: Cluster) -> dict[str, Any]:
    assert cluster.supervisor is not None
    doc = cluster.supervisor.upgrades.document()["upgrade"]
    assert isinstance(doc, dict)
    return doc


async def upgrade_done(cluster: Cluster, target: str, timeout_s: float) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        doc = upgrade_doc(cluster)
        assert doc["state"] not in ("halted", "refused"), doc
        return doc if doc["state"] == "done" and doc["target"] == target else None

    return await eventually(done, timeout_s, f"the upgrade of {cluster.name} to {target} done", 0.2)


async def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "ceres_supervisor", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def releases(client: docker.DockerClient, cluster: str) -> dict[str, str]:
    return {
        c.labels["io.ceres-supervisor.node"]: c.labels.get(RELEASE_LABEL, "")
        for c in client.containers.list(all=True, filters={"label": f"io.ceres-supervisor.cluster={cluster}"})
    }


def steps_of(doc: dict[str, Any]) -> list[str]:
    return [str(s["text"]) for s in doc["operation"]["steps"]]


async def test_a_rolling_upgrade_goes_one_node_at_a_time_each_back_with_its_shards(
    make_cluster, docker_client
) -> None:
    cluster = await started_with_shards_everywhere(make_cluster, meta=3, db=2, version="1.2.4")
    spec = cluster.spec
    urls = [f"http://{m.host}:{m.client_port}" for m in spec.meta.nodes]
    endpoints = {n.name: f"{n.host}:{n.grpc_port}" for n in spec.ceresdb.nodes}
    leader = cluster.supervisor.leader() if cluster.supervisor else None
    assert leader is not None

    cluster.write(upgraded(cluster.text, "1.2.4", "1.2.5"))
    planned = await cli("plan", "-c", str(cluster.path))
    assert planned.returncode == 0, planned.stderr
    assert "upgrade ceresdb 1.2.4 -> ceresdb 1.2.5, in 5 steps, in this order:" in planned.stdout, (
        planned.stdout
    )
    order = [
        line.split()[1]
        for line in planned.stdout.splitlines()
        if line.startswith("  ") and line.split()[0][:-1].isdigit()
    ]
    followers = [m.name for m in spec.meta.nodes if m.name != leader]
    assert order == [*followers, leader, "db0", "db1"], planned.stdout
    assert "meta downtime: none expected" in planned.stdout

    with (
        DockerEvents(docker_client, cluster.name) as events,
        ShardWatch(urls, "/ceresdb", cluster.name) as locks,
    ):
        assert cluster.supervisor is not None
        reloaded = await cluster.supervisor.request_reload()
        assert reloaded.ok, reloaded.error
        doc = await upgrade_done(cluster, "ceresdb 1.2.5", 180)
        await healthy_with_shards(cluster)
        status = await cli("upgrade", "status", "--url", cluster.api_url)
    destroyed = [e.node for e in events.of(actions=("destroy",))]
    assert destroyed == order, f"one node at a time, each once, in the plan's order: {destroyed}"
    assert events.most_down_at_once("meta")[0] == 1
    # A CeresDB node is down from its stop until it holds its shards again: never two at once.
    down = sorted(
        (stop.at, locks.down_until(endpoints[stop.node], stop.at), stop.node)
        for stop in events.chosen_stops()
        if stop.role == "ceresdb"
    )
    assert [node for _start, _end, node in down] == ["db0", "db1"]
    assert all(end is not None for _start, end, _node in down), down
    assert down[1][0] > down[0][1], f"db1 stopped while db0 did not hold its shards yet: {down}"
    steps = steps_of(doc)
    for db in ("db0", "db1"):
        flushed = [i for i, s in enumerate(steps) if s.startswith(f"{db}: flush_memtable: 0 tables flushed")]
        stopped = [i for i, s in enumerate(steps) if s.startswith(f"{db}: stopping")]
        assert flushed and stopped and flushed[0] < stopped[0], f"{db} not flushed before its stop: {steps}"
    assert set(releases(docker_client, cluster.name).values()) == {"ceresdb 1.2.5"}
    assert status.returncode == 0 and status.stdout.startswith("upgrade - -> ceresdb 1.2.5: done"), (
        status.stdout
    )


async def test_meta_goes_together_over_the_moved_leader_key_then_to_horaedb_keeping_the_1x_data(
    make_cluster, docker_client
) -> None:
    cluster = await started_with_shards_everywhere(make_cluster, meta=3, db=2, version="1.2.6")
    assert cluster.supervisor is not None
    spec = cluster.spec
    url = f"http://{spec.meta.nodes[0].host}:{spec.meta.nodes[0].client_port}"
    endpoints = {f"{n.host}:{n.grpc_port}" for n in spec.ceresdb.nodes}

    # 1.2.6 -> 1.2.7: every meta member together, once; CeresDB never restarted while meta is down.
    cluster.write(upgraded(cluster.text, "1.2.6", "1.2.7"))
    with DockerEvents(docker_client, cluster.name) as events:
        assert (await cluster.supervisor.request_reload()).ok
        first = await eventually(
            lambda: (d := upgrade_doc(cluster))["steps"] and d, 30, "the upgrade's steps"
        )
        assert first["steps"][0]["nodes"] == ["meta0", "meta1", "meta2"] and first["steps"][0]["together"]
        assert "the leader key moves at 1.2.7" in first["steps"][0]["why"]
        await upgrade_done(cluster, "ceresdb 1.2.7", 150)
        await healthy_with_shards(cluster)
    meta_stops = [e.at for e in events.chosen_stops() if e.role == "meta"]
    meta_starts = [e.at for e in events.of(actions=("start",)) if e.role == "meta"]
    db_stops = [e.at for e in events.chosen_stops() if e.role == "ceresdb"]
    assert len(meta_stops) == 3 and len(meta_starts) == 3, (
        "each meta member once",
        [(round(e.at, 2), e.action, e.node, e.signal) for e in events.events if e.role == "meta"],
        [
            (str(e.at)[11:23], e.node, e.type, e.message)
            for e in cluster.supervisor.events
            if e.node and "meta" in e.node
        ],
    )
    assert max(meta_stops) < min(meta_starts), "all stopped before any started: together"
    assert len(db_stops) == 2 and min(db_stops) > max(meta_starts), (
        "no CeresDB node restarted while meta was down"
    )
    assert events.most_down_at_once("ceresdb")[0] == 1
    assert etcd_range(url, "/ceresdb/members/leader"), "1.2.7's leader key"

    # 1.2.7 -> horaedb 2.0.0 without the 1.x roots and catalog: refused, nothing touched.
    cluster.write(to_horaedb(cluster.text, keep=False))
    refused = await cluster.supervisor.request_reload()
    assert not refused.ok and "needs cluster.keep_ceresdb_data = true" in (refused.error or ""), refused.error

    # With them: meta together first, then every CeresDB node together; the 1.x keys stay.
    keys_before = set(etcd_range(url, "/ceresdb/"))
    cluster.write(to_horaedb(cluster.text, keep=True))
    with DockerEvents(docker_client, cluster.name) as events:
        assert (await cluster.supervisor.request_reload()).ok
        await upgrade_done(cluster, "horaedb 2.0.0", 120)
        await healthy_with_shards(cluster)
    meta_stops = [e.at for e in events.chosen_stops() if e.role == "meta"]
    meta_starts = [e.at for e in events.of(actions=("start",)) if e.role == "meta"]
    db_stops = [e.at for e in events.chosen_stops() if e.role == "ceresdb"]
    db_starts = [e.at for e in events.of(actions=("start",)) if e.role == "ceresdb"]
    assert len(meta_stops) == 3 and max(meta_stops) < min(meta_starts), "meta together, first"
    assert len(db_stops) == 2 and min(db_stops) > max(meta_starts), "CeresDB after meta"
    assert max(db_stops) < min(db_starts), "every CeresDB node together: 1.x and 2.x never mixed"
    assert set(releases(docker_client, cluster.name).values()) == {"horaedb 2.0.0"}
    for c in await cluster.containers():
        if c.labels["io.ceres-supervisor.role"] == "ceresdb":
            assert "HORAEDB_DEFAULT_CATALOG=ceresdb" in c.attrs["Config"]["Env"]
    locks = shard_lock_leases(url, "/ceresdb", cluster.name)
    assert len(locks) == spec.meta.shard_total and {holder for holder, _lease in locks.values()} == endpoints
    keys_after = set(etcd_range(url, "/ceresdb/"))
    lock_keys = {k for k in keys_before if k.startswith(f"/ceresdb/{cluster.name}/shards/")}
    assert lock_keys and lock_keys <= keys_after
    # What the real CeresMeta keeps under its root (docs/real-servers.md 5.3): the 2.0.0 cluster reads
    # the same tables. (The stand-in keeps its cluster record elsewhere until it learns this.)
    table_keys = {k for k in keys_before if k.startswith("/ceresdb/v1/cluster/")}
    assert table_keys, (
        f"no table keys under /ceresdb/v1/cluster/ before the upgrade: {sorted(keys_before)[:20]}"
    )
    assert table_keys <= keys_after


# --- two machines ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engines(docker_client: docker.DockerClient) -> Iterator[Engines]:
    with Engines(docker_client, versions=["1.2.4", "1.2.5"]) as pool:
        yield pool


def state_of(daemon: Daemon) -> dict[str, Any] | None:
    try:
        code, doc = daemon.get("/v1/upgrade")
    except OSError:
        return None
    return (
        doc["upgrade"]
        if code == 200 and isinstance(doc, dict) and isinstance(doc.get("upgrade"), dict)
        else None
    )


def test_a_missing_image_stops_nothing_anywhere_and_a_killed_agent_resumes(
    engines: Engines, docker_client: docker.DockerClient, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    (first,) = engines.start(1, ["1.2.4", "1.2.5"])
    (second,) = engines.start(1, ["1.2.4"])  # lacks the 1.2.5 images
    machine = {"127.0.0.1": first, "127.0.0.2": second}
    name = f"u{uuid.uuid4().hex[:8]}"
    settings = {**FAST, "agent_ttl": "5s", "listen": "127.0.0.1:1"}
    extra = "[supervisor]\n" + "".join(
        f'{k} = "{v}"\n' if isinstance(v, str) else f"{k} = {v}\n" for k, v in settings.items()
    )
    config = tmp_path / "cluster.toml"
    text = cluster_toml(
        meta=1, db=2, version="1.2.4", cluster_name=name, state_dir=str(tmp_path / "state"), extra=extra
    )
    config.write_text(text)
    agents: dict[str, Daemon] = {}
    ticks = FastTicks(first.client, name).__enter__()

    def start(host: str, port: int) -> Daemon:
        daemon = Daemon(
            config, tmp_path / f"agent-{host}.log", host=host, env={"DOCKER_HOST": machine[host].url}
        )
        daemon.listen = f"{host}:{port}"
        agents[host] = daemon.start()
        return daemon

    def healthy() -> bool:
        """Every node healthy with its shards, as each agent sees the cluster (else says what it sees)."""
        for host, daemon in agents.items():
            code, doc = daemon.get("/v1/cluster")
            seen = {
                n["name"]: (n["state"], n["reason"], (n["lease"] or {}).get("held"))
                for n in doc.get("nodes", [])
            }
            if (
                code != 200
                or doc["cluster"]["state"] != "healthy"
                or not all(state == "healthy" and held is not False for state, _reason, held in seen.values())
            ):
                raise AssertionError(f"{host} sees {code} {doc.get('cluster')}: {seen}")
        return True

    try:
        for host, port in zip(machine, free_ports(2), strict=True):
            start(host, port)
        wait_until(healthy, 180, "the cluster healthy on both machines")
        config.write_text(upgraded(text, "1.2.4", "1.2.5"))
        with DockerEvents(first.client, name) as on_first, DockerEvents(second.client, name) as on_second:
            for daemon in agents.values():
                code, body = http_json(daemon.url + "/v1/reload", {}, timeout_s=60)
                assert code == 200, body
            lacking = f"127.0.0.2 lacks {IMAGE_PREFIX}/ceresdb-server:1.2.5"
            wait_until(
                lambda: all(lacking in str((state_of(d) or {}).get("preflight")) for d in agents.values()),
                60,
                "every agent saying which machine lacks which image",
            )
            wait_until(
                lambda: any((s := state_of(d)) and s["claim"] for d in agents.values()),
                30,
                "an agent holding the upgrade's operation key",
            )
            touched = on_first.of(actions=("kill", "stop", "destroy")) + on_second.of(
                actions=("kill", "stop", "destroy")
            )
            assert touched == [], f"something was stopped before every machine had the images: {touched}"

            engines.load(second, ["1.2.5"])  # the operator brings the image to the machine
            wait_until(lambda: on_first.of("db0", ("start",)), 120, "db0 recreated on the first machine")
            driver = wait_until(
                lambda: next(
                    (
                        h
                        for h, d in agents.items()
                        if (s := state_of(d)) and s["claim"] and s["claim"].get("host") == h
                    ),
                    None,
                ),
                30,
                "the agent driving the upgrade",
            )
            agents[driver].process.kill()  # type: ignore[union-attr]
            agents[driver].process.wait(10)  # type: ignore[union-attr]
            agents[driver].start()  # as systemd's Restart=on-failure would
            wait_until(
                lambda: all((s := state_of(d)) and not s["pending"] for d in agents.values()),
                240,
                "the upgrade finished, as both agents see it",
            )
            wait_until(healthy, 120, "the cluster healthy on both machines")
            destroyed = sorted(
                e.node for e in on_first.of(actions=("destroy",)) + on_second.of(actions=("destroy",))
            )
        assert destroyed == ["db0", "db1", "meta0"], f"each node recreated once: {destroyed}"
        assert releases(first.client, name) == {"meta0": "ceresdb 1.2.5", "db0": "ceresdb 1.2.5"}
        assert releases(second.client, name) == {"db1": "ceresdb 1.2.5"}
    finally:
        ticks.__exit__()
        for daemon in agents.values():
            daemon.stop()
        if failed(request):
            for engine in (first, second):
                save_logs(
                    f"{request.node.name}-{engine.name}",
                    engine.client.containers.list(all=True),
                    [engine.log, *tmp_path.glob("agent-*.log")],
                )
        engines.remove(first, second)
