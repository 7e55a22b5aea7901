"""Cold start of 3 meta + 3 CeresDB nodes: the supervisor vs the floor, interleaved.

    .venv/bin/python bench/coldstart.py [REPS]        (default 3)

Supervisor: from spawning `ceres-supervisor run` to `/readyz` 200 (every node healthy, meta ready).
Floor: the same rendered containers started by hand in the right order with the same readiness
checks, polled every 20 ms: all meta members started together; meta ready when every member's etcd
`/health` and health route answer and one member lists the cluster; then the CeresDB nodes; done
when each answers `GET /`. Every run starts from empty state (a new cluster, new etcd data).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import common
import docker

from tests.standins import StandIns


def meta_ready(spec: object) -> bool:
    members = spec.meta.nodes  # type: ignore[attr-defined]
    health = spec.release.meta_health_path  # type: ignore[attr-defined]
    for m in members:
        code, body = common.http_get(f"http://{m.host}:{m.client_port}/health", 0.5)
        if code != 200 or json.loads(body).get("health") != "true":
            return False
        if common.http_get(f"http://{m.host}:{m.http_port}{health}", 0.5)[0] != 200:
            return False
    for m in members:
        code, body = common.http_get(f"http://{m.host}:{m.http_port}/api/v1/clusters", 0.5)
        if code == 200 and any(c.get("Name") == spec.cluster.name for c in json.loads(body).get("data") or []):  # type: ignore[attr-defined]
            return True
    return False


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
        done = common.wait_for(lambda: all(common.http_get(f"http://{n.host}:{n.http_port}/", 0.5)[0] == 200
                                           for n in spec.ceresdb.nodes), 120, "CeresDB answering (by hand)")
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
    common.build.main(["1.2.2"])
    client = docker.from_env()
    by_hand, by_supervisor = [], []
    for rep in range(reps):
        for who in (("floor", "supervisor") if rep % 2 == 0 else ("supervisor", "floor")):
            if who == "floor":
                by_hand.append(floor(client))
            else:
                by_supervisor.append(supervised())
            print(f"rep {rep + 1}/{reps} {who}: {(by_hand if who == 'floor' else by_supervisor)[-1]:.2f} s", flush=True)
    f, s = common.summary(by_hand), common.summary(by_supervisor)
    common.record(
        "Cold start: 3 meta + 3 CeresDB nodes, supervisor vs the floor", f".venv/bin/python bench/coldstart.py {reps}",
        common.markdown(["who", "n", "min s", "median s", "max s"],
                        [["floor (by hand, same checks)", f["n"], f["min"], f["median"], f["max"]],
                         ["ceres-supervisor (from process spawn)", s["n"], s["min"], s["median"], s["max"]]]),
        f"Median difference: **{s['median'] - f['median']:.2f} s** (target: within 2 s of the floor). Both are "
        "dominated by etcd's election (3 s timeout) and CeresMeta creating the cluster 2 s after election.",
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
