"""A rolling upgrade of 3 meta + 3 CeresDB nodes (1.2.4 -> 1.2.5): the supervisor vs its floor.

    .venv/bin/python bench/upgrade.py [REPS]        (default 2)

Both start from a settled cluster at 1.2.4: meta's cluster view Stable, every shard assigned
(getNodeShards) and locked by its node (`settled`: a node recreated while meta still prepares the
cluster comes back without the shards it had, which meta then gives to other nodes).
Supervisor: `ceres-supervisor run` on that cluster, every node healthy with its shards; the file
is edited to 1.2.5 and `POST /v1/reload` starts the upgrade (its preflight, then meta followers,
the leader, each CeresDB node flushed and back with its shards before the next).
Floor: the same containers started by hand, then the same steps by hand with the same checks,
polled every 20 ms: each meta member stopped, removed and created anew at 1.2.5, then its etcd
`/health` and health route answering (the next one only then), meta ready (the leader lists the
cluster); each CeresDB node flushed (`POST /debug/flush_memtable`), stopped, removed, created anew,
answering `GET /`, and holding the shards meta assigned it again before the next.

Both are timed the same way, by this script: from the reload (by hand: the first stop) to the first
reading of the shard locks in etcd in which every shard is held under a lease that did not exist
before the upgrade (every CeresDB node has been recreated and holds its shards again). The
stand-ins keep the real 5 s scheduler tick; `shard_lock_ttl` is 15 s, the least CeresDB accepts (a
stopped node's locks outlive it until then). Repetitions alternate who goes first; each starts from
empty state.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import common
import docker
from coldstart import meta_ready
from stats import summary

from ceres_supervisor.model.spec import DesiredState
from testkit.helpers import cluster_view_state, http_json, meta_leader, node_shards, shard_lock_leases
from testkit.standins import StandIns

OLD, NEW = "1.2.4", "1.2.5"
SETTINGS: dict[str, object] = {}
"""The supervisor's defaults (only `listen` is set, where its API is)."""
TARGET = 1.2


def upgraded(text: str) -> str:
    return text.replace(f'version = "{OLD}"', f'version = "{NEW}"').replace(f':{OLD}"', f':{NEW}"')


def locks(spec: DesiredState) -> dict[int, tuple[str, int]] | None:
    """The shard locks, from the first meta member that answers (one is being recreated, maybe)."""
    for m in spec.meta.nodes:
        try:
            return shard_lock_leases(f"http://{m.host}:{m.client_port}", "/ceresdb", spec.cluster.name)
        except (OSError, AssertionError, ValueError):
            continue
    return None


def all_held(spec: DesiredState, old_leases: set[int] | None = None) -> bool:
    """Every shard locked (under a lease newer than `old_leases`, when given)."""
    found = locks(spec)
    if found is None or len(found) < spec.meta.shard_total:
        return False
    return old_leases is None or not ({lease for _holder, lease in found.values()} & old_leases)


def assigned(spec: DesiredState) -> dict[int, str] | None:
    """shard -> the node meta's leader assigns it (getNodeShards), or None when no leader answers."""
    first = spec.meta.nodes[0]
    try:
        leader = meta_leader(f"http://{first.host}:{first.client_port}", spec.release.meta_leader_key)
        if leader is None:
            return None
        m = next(m for m in spec.meta.nodes if m.name == leader[0][0])
        return dict(node_shards(f"http://{m.host}:{m.http_port}", spec.cluster.name))
    except (OSError, AssertionError, ValueError, StopIteration):
        return None


def stable(spec: DesiredState) -> bool:
    """Meta's cluster view is Stable (every shard assigned), read from the first member that answers."""
    for m in spec.meta.nodes:
        try:
            return cluster_view_state(f"http://{m.host}:{m.client_port}", "/ceresdb") == "Stable"
        except (OSError, AssertionError, ValueError):
            continue
    return False


def settled(spec: DesiredState) -> bool:
    """Meta's cluster is Stable, assigns every shard, and each is locked by the node it is assigned
    to. Every shard locked is not enough: while meta prepares the cluster (before Stable) its
    topology is what the nodes' heartbeats say they opened, so a node recreated then comes back
    without the shards it had, which the next leader gives to other nodes."""
    found, owners = locks(spec), assigned(spec)
    return (
        stable(spec)
        and found is not None
        and owners is not None
        and len(owners) == spec.meta.shard_total
        and all(found.get(s, ("", 0))[0] == node for s, node in owners.items())
    )


def leases_now(spec: DesiredState) -> set[int]:
    found = locks(spec)
    assert found is not None
    return {lease for _holder, lease in found.values()}


def start(runner: StandIns, spec: DesiredState, nodes: list[Any]) -> dict[str, Any]:
    """These nodes' containers, started together."""
    with ThreadPoolExecutor(len(nodes)) as pool:
        made = list(pool.map(lambda n: runner.run(spec, n.name), nodes))
    return {n.name: c for n, c in zip(nodes, made, strict=True)}


def member_healthy(spec: DesiredState, name: str) -> bool:
    """The supervisor's check of one meta member: its etcd `/health` and its health route."""
    m = next(m for m in spec.meta.nodes if m.name == name)
    etcd = (
        json.loads(common.http_get(f"http://{m.host}:{m.client_port}/health", 0.5)[1]).get("health") == "true"
    )
    return etcd and common.answers(f"http://{m.host}:{m.http_port}{spec.release.meta_health_path}")


def holds_again(spec: DesiredState, endpoint: str, shards: set[int], old_leases: set[int]) -> bool:
    """The node holds each of `shards` under a lease that did not exist before the upgrade."""
    found = locks(spec)
    return found is not None and all(
        found.get(s, ("", 0))[0] == endpoint and found[s][1] not in old_leases for s in shards
    )


def floor(client: docker.DockerClient) -> float:
    text, _name, state = common.cluster_text(3, 3, version=OLD)
    state.mkdir(parents=True, exist_ok=True)
    runner = StandIns(client, state)
    spec = runner.load(text)
    try:
        running = start(runner, spec, spec.meta.nodes)
        common.wait_for(lambda: meta_ready(spec), 120, "meta ready (by hand)")
        running.update(start(runner, spec, spec.ceresdb.nodes))
        common.wait_for(lambda: settled(spec), 300, "every shard assigned and held (by hand)", 0.1)
        new = runner.load(upgraded(text))
        first = spec.meta.nodes[0]
        leader = meta_leader(f"http://{first.host}:{first.client_port}", spec.release.meta_leader_key)
        assert leader is not None
        (leader_name, _id, _endpoint), _lease = leader
        order = [m.name for m in new.meta.nodes if m.name != leader_name] + [leader_name]
        old_leases = leases_now(spec)
        owners = assigned(spec) or {}
        held = {
            d.name: {s for s, node in owners.items() if node == f"{d.host}:{d.grpc_port}"}
            for d in spec.ceresdb.nodes
        }
        started = time.time()
        for name in order:  # the followers, then the leader: each healthy before the next
            running[name].stop(timeout=30)
            running[name].remove()
            running[name] = runner.run(new, name)
            common.wait_for(partial(member_healthy, new, name), 120, f"{name} healthy (by hand)")
        common.wait_for(lambda: meta_ready(new), 120, "meta ready (by hand)")
        for d in new.ceresdb.nodes:  # each flushed, then back with its shards before the next
            http_json(f"http://{d.host}:{d.http_port}/debug/flush_memtable", {}, 30)
            running[d.name].stop(timeout=30)
            running[d.name].remove()
            running[d.name] = runner.run(new, d.name)
            common.wait_for(
                partial(common.answers, f"http://{d.host}:{d.http_port}/"), 120, f"{d.name} answering"
            )
            back = partial(holds_again, new, f"{d.host}:{d.grpc_port}", held[d.name], old_leases)
            common.wait_for(back, 300, f"{d.name} holding its shards again (by hand)", 0.02)
        done = common.wait_for(
            lambda: all_held(new, old_leases), 300, "every shard held again (by hand)", 0.02
        )
        return done - started
    finally:
        runner.cleanup()
        shutil.rmtree(state, ignore_errors=True)


def supervised() -> tuple[float, float]:
    """(until every shard is held again, until the supervisor says the upgrade is done)."""
    text, name, state = common.cluster_text(3, 3, SETTINGS, version=OLD)
    state.mkdir(parents=True, exist_ok=True)
    config = state / "cluster.toml"
    config.write_text(text)
    d = common.start_daemon(config, name, state, state / "supervisor.log")
    try:
        spec = common.loading.load(config).spec
        common.wait_for(d.ready, 180, "the cluster healthy (supervised)", 0.1)
        common.wait_for(
            lambda: (
                settled(spec)
                and all(  # a node meta assigns no shards holds none
                    n["state"] == "healthy" and (n.get("lease") or {}).get("held") is not False
                    for n in d.status()["nodes"]
                    if n["role"] == "ceresdb"
                )
            ),
            300,
            "every shard held (supervised)",
            0.1,
        )
        old_leases = leases_now(spec)
        config.write_text(upgraded(text))
        started = time.time()
        code, body = http_json(f"{d.url}/v1/reload", {}, 60)
        assert code == 200, body
        done = common.wait_for(
            lambda: all_held(spec, old_leases), 600, "every shard held again (supervised)", 0.02
        )
        common.wait_for(
            lambda: (d.get_json("/v1/upgrade")["upgrade"] or {}).get("state") == "done",
            300,
            "the supervisor saying the upgrade is done",
            0.1,
        )
        upgrade = d.get_json("/v1/upgrade")["upgrade"]
        assert upgrade["target"] == f"ceresdb {NEW}" and not upgrade["pending"], upgrade
        said = common.epoch(upgrade["operation"]["steps"][-1]["at"])  # its own "done: ok"
        return done - started, said - started
    finally:
        d.stop()
        common.cleanup(name, state)


def main(reps: int) -> None:
    run = common.Run("upgrade", [str(reps)])
    settings = common.changed_settings(SETTINGS)
    common.build.main([OLD, NEW])
    client = docker.from_env()
    by_hand: list[float] = []
    by_supervisor: list[float] = []
    said: list[float] = []
    for rep in range(reps):
        for who in ("floor", "supervisor") if rep % 2 == 0 else ("supervisor", "floor"):
            if who == "floor":
                by_hand.append(floor(client))
            else:
                shards_back, done = supervised()
                by_supervisor.append(shards_back)
                said.append(done)
            print(
                f"rep {rep + 1}/{reps} {who}: {(by_hand if who == 'floor' else by_supervisor)[-1]:.1f} s",
                flush=True,
            )
    f, s, d = summary(by_hand), summary(by_supervisor), summary(said)
    ratio = s["median"] / f["median"]
    run.table(
        f"Rolling upgrade {OLD} -> {NEW} of 3 meta + 3 CeresDB nodes, supervisor vs the floor",
        ["who", "n", "min s", "median s", "max s"],
        [
            [
                "floor (the same steps by hand, same checks)",
                f["n"],
                *(f"{f[k]:.1f}" for k in ("min", "median", "max")),
            ],
            [
                "ceres-supervisor (from `POST /v1/reload`)",
                s["n"],
                *(f"{s[k]:.1f}" for k in ("min", "median", "max")),
            ],
            [
                "ceres-supervisor, until its operation says done",
                d["n"],
                *(f"{d[k]:.1f}" for k in ("min", "median", "max")),
            ],
        ],
        f"{settings} (the floor: no supervisor; both: shard_lock_ttl = 15, the stand-ins' real 5 s tick)",
        f"Median ratio: **{ratio:.2f}** (target: at most {TARGET:g}). Until every shard is held again under a new "
        "lease, read by this script in etcd every 20 ms. Each CeresDB node waits for its previous run's locks "
        "to expire (up to shard_lock_ttl) and for CeresMeta's next ticks: the servers' pace, the same by hand.",
    )
    run.target(
        "upgrade",
        f"{s['median']:.1f} s vs the floor's {f['median']:.1f} s: x{ratio:.2f} (n={reps} each, interleaved)",
        ratio <= TARGET,
        settings,
    )
    run.save()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
