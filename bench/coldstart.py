"""Cold start of 3 meta + 3 CeresDB nodes: the supervisor vs the floor, interleaved.

    .venv/bin/python bench/coldstart.py [REPS]        (default 5)

Supervisor: from spawning `ceres-supervisor run` to `/readyz` 200 (every node healthy, meta ready).
Floor: the same rendered containers started by hand in the right order with the same readiness
checks, polled every 20 ms: all meta members started together; meta ready when every member's etcd
`/health` and health route answer and the leader (CeresMeta's leader key in etcd) lists the
cluster; then the CeresDB nodes; done when each answers `GET /`. Every run starts from empty state
(a new cluster, new etcd data).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import common
import docker
from stats import summary

from ceres_supervisor.model.spec import DesiredState
from testkit.helpers import meta_leader
from testkit.standins import StandIns


def meta_ready(spec: DesiredState) -> bool:
    """The supervisor's readiness checks: every member's etcd and health route answer, and the
    leader (from CeresMeta's leader key in etcd) lists the cluster. Only the leader is asked: a
    follower on a shared machine forwards to itself (README, "CeresDB pitfalls")."""
    members = spec.meta.nodes
    for m in members:
        code, body = common.http_get(f"http://{m.host}:{m.client_port}/health", 0.5)
        if code != 200 or json.loads(body).get("health") != "true":
            return False
        if common.http_get(f"http://{m.host}:{m.http_port}{spec.release.meta_health_path}", 0.5)[0] != 200:
            return False
    first = members[0]
    leader = meta_leader(f"http://{first.host}:{first.client_port}", spec.release.meta_leader_key)
    if leader is None:
        return False
    (name, _id, _endpoint), _lease = leader
    m = next(m for m in members if m.name == name)
    code, body = common.http_get(f"http://{m.host}:{m.http_port}/api/v1/clusters", 0.5)
    return code == 200 and any(c.get("Name") == spec.cluster.name for c in json.loads(body).get("data") or [])


def floor(client: docker.DockerClient) -> float:
    text, _name, state = common.cluster_text(3, 3)
    state.mkdir(parents=True, exist_ok=True)
    runner = StandIns(client, state)
    spec = runner.load(text)
    try:
        started = time.time()
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda n: runner.run(spec, n.name), spec.meta.nodes))
        common.wait_for(lambda: meta_ready(spec), 120, "meta ready (by hand)")
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda n: runner.run(spec, n.name), spec.ceresdb.nodes))
        done = common.wait_for(
            lambda: all(
                common.http_get(f"http://{n.host}:{n.http_port}/", 0.5)[0] == 200 for n in spec.ceresdb.nodes
            ),
            120,
            "CeresDB answering (by hand)",
        )
        return done - started
    finally:
        runner.cleanup()
        shutil.rmtree(state, ignore_errors=True)


def supervised() -> float:
    started = time.time()
    with common.daemon(3, 3) as d:
        done = common.wait_for(d.ready, 180, "the cluster healthy (supervised)")
    return done - started


def main(reps: int) -> None:
    run = common.Run("coldstart", [str(reps)])
    settings = common.changed_settings({})
    common.build.main(["1.2.2"])
    client = docker.from_env()
    by_hand: list[float] = []
    by_supervisor: list[float] = []
    for rep in range(reps):
        for who in ("floor", "supervisor") if rep % 2 == 0 else ("supervisor", "floor"):
            samples = by_hand if who == "floor" else by_supervisor
            samples.append(floor(client) if who == "floor" else supervised())
            print(f"rep {rep + 1}/{reps} {who}: {samples[-1]:.2f} s", flush=True)
    f, s = summary(by_hand), summary(by_supervisor)
    difference = s["median"] - f["median"]
    run.table(
        "Cold start: 3 meta + 3 CeresDB nodes, supervisor vs the floor",
        ["who", "n", "min s", "median s", "max s"],
        [
            ["floor (by hand, same checks)", f["n"], *(f"{f[k]:.2f}" for k in ("min", "median", "max"))],
            [
                "ceres-supervisor (from process spawn)",
                s["n"],
                *(f"{s[k]:.2f}" for k in ("min", "median", "max")),
            ],
        ],
        f"{settings} (the floor: no supervisor)",
        f"Median difference: **{difference:.2f} s** (target: within 2 s of the floor). Both are dominated by "
        "etcd's election (3 s timeout) and CeresMeta creating the cluster 2 s after election. Repetitions "
        "alternate who goes first; each starts from empty state.",
    )
    run.target(
        "coldstart",
        f"{s['median']:.2f} s vs the floor's {f['median']:.2f} s: {difference:+.2f} s "
        f"(n={reps} each, interleaved)",
        difference <= 2,
        settings,
    )
    run.save()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
