"""Detection and recovery after a crash: the supervisor vs Docker's --restart=always, side by side.

    .venv/bin/python bench/restart.py [KILLS]        (default 20)

A crash is `kill -9` of the container's main process (State.Pid): Docker treats `docker kill` as
a manual stop and would not restart. Each round kills the supervisor's CeresDB node and a peer
container of the same stand-in image under `--restart=always`, interleaved, each after more than
10 s of uptime so that both are on their first-crash delay (Docker resets its backoff after 10 s,
the supervisor after `backoff_reset`, set to 10 s here). "running" is Docker's `start` event for
the container; "HTTP" is the first `GET /` answering 200, polled every 5 ms.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import common
import docker

from ceres_supervisor import files, loading, rendering, secrets
from ceres_supervisor.engine import parse_time


def start_peer(d: common.Daemon, client: docker.DockerClient) -> tuple[object, int]:
    """The same stand-in image, configured like the cluster's nodes, restarted by Docker itself."""
    grpc, http, mysql, _pg = common.free_ports(4)
    text = d.config.read_text() + (
        f'\n[[ceresdb.nodes]]\nname = "peer"\nhost = "127.0.0.9"\ngrpc_port = {grpc}\nhttp_port = {http}\n'
        f"mysql_port = {mysql}\n"
    )
    path = d.state / "peer.toml"
    path.write_text(text)
    spec = loading.load(path).spec
    node = next(n for n in rendering.render(spec) if n.name == "peer")
    files.write_node(d.state / "peer", node, secrets.resolve)
    (d.state / "peer-data").mkdir(exist_ok=True)
    container = client.containers.run(
        spec.ceresdb.image, detach=True, name=f"bench-peer-{d.name}", network_mode="host",
        environment=node.env, restart_policy={"Name": "always"}, labels={common.BENCH_LABEL: d.name},
        volumes={str(d.state / "peer" / node.config_name): {"bind": node.config_mount, "mode": "ro"},
                 str(d.state / "peer-data"): {"bind": node.data_mount, "mode": "rw"}},
    )
    return container, http


def main(kills: int) -> None:
    client = docker.from_env()
    starts: dict[str, list[int]] = {}
    with common.daemon(1, 2, {"backoff_reset": "10s"}) as d:
        common.wait_for(d.ready, 180, "the cluster healthy", 0.2)
        spec = loading.load(d.config).spec
        db0 = spec.ceresdb.nodes[0]
        supervised = client.containers.get(f"ceres-{spec.cluster.name}-db0")
        peer, peer_http = start_peer(d, client)
        try:
            common.wait_for(lambda: common.http_get(f"http://127.0.0.9:{peer_http}/")[0] == 200, 60, "the peer")
            stop = threading.Event()

            def watch() -> None:
                ids = {supervised.id: "supervisor", peer.id: "docker"}  # type: ignore[attr-defined]
                for event in client.events(decode=True, filters={"type": "container", "event": ["start"]}):
                    if stop.is_set():
                        return
                    who = ids.get(event.get("id", ""))
                    if who:
                        starts.setdefault(who, []).append(int(event["timeNano"]))

            threading.Thread(target=watch, daemon=True).start()
            targets = {
                "supervisor": (supervised, f"http://{db0.host}:{db0.http_port}/"),
                "docker": (peer, f"http://127.0.0.9:{peer_http}/"),
            }
            samples: dict[str, dict[str, list[float]]] = {k: {"running": [], "http": [], "own": []} for k in targets}
            detection: list[float] = []
            for round_ in range(kills):
                order = list(targets) if round_ % 2 == 0 else list(reversed(targets))
                for who in order:
                    container, url = targets[who]
                    container.reload()  # type: ignore[attr-defined]
                    started = container.attrs["State"]["StartedAt"]  # type: ignore[attr-defined]
                    up_since = time.time() - _age(started)
                    time.sleep(max(0.0, up_since + 10.5 - time.time()))  # both on their first-crash delay
                    before = len(starts.get(who, []))
                    killed_ns = time.time_ns()
                    os.kill(container.attrs["State"]["Pid"], signal.SIGKILL)  # type: ignore[attr-defined]
                    http_at = common.wait_for(lambda url=url: common.http_get(url, 0.2)[0] == 200, 60, f"{who} HTTP",
                                              0.005)
                    common.wait_for(lambda who=who, before=before: len(starts.get(who, [])) > before, 10,
                                    f"{who} start event", 0.005)
                    start_ns = starts[who][before]
                    samples[who]["running"].append((start_ns - killed_ns) / 1e6)
                    samples[who]["http"].append(http_at * 1000 - killed_ns / 1e6)
                    samples[who]["own"].append(http_at * 1000 - start_ns / 1e6)
                    if who == "supervisor":
                        deaths = [e for e in d.events() if e["node"] == "db0" and e["type"] == "die"]
                        at = deaths[-1]["at"] if deaths else None
                        if at is not None:
                            detection.append(_epoch(at) * 1000 - killed_ns / 1e6)
                print(f"round {round_ + 1}/{kills}: " + ", ".join(
                    f"{w} running {samples[w]['running'][-1]:.0f} ms, HTTP {samples[w]['http'][-1]:.0f} ms"
                    for w in targets), flush=True)
            stop.set()
        finally:
            peer.remove(force=True)  # type: ignore[attr-defined]

    command = f".venv/bin/python bench/restart.py {kills}"
    det = common.summary(detection)
    common.record(
        "Detection: SIGKILL -> the supervisor has recorded the death", command,
        common.markdown(["n", "min ms", "median ms", "p95 ms", "max ms", "target"],
                        [[det["n"], det["min"], det["median"], det["p95"], det["max"], "median < 100 ms"]]),
        "Measured from the `kill -9` to the `at` of the `die` event in `/v1/events` (the time the "
        "supervisor received Docker's event), same host clock.",
    )
    rows = []
    for who, label in (("supervisor", "ceres-supervisor"), ("docker", "Docker --restart=always")):
        for metric, name in (("running", "kill -> running"), ("http", "kill -> GET / 200"),
                             ("own", "running -> GET / 200 (the stand-in itself)")):
            s = common.summary(samples[who][metric])
            rows.append([label, name, s["n"], s["min"], s["median"], s["p95"], s["max"]])
    sup, dock = samples["supervisor"], samples["docker"]
    ratio = common.summary(sup["running"])["median"] / common.summary(dock["running"])["median"]
    overhead = common.summary(sup["http"])["median"] - common.summary(sup["own"])["median"]
    common.record(
        "Recovery: SIGKILL -> running and -> healthy, supervisor vs Docker restart policy", command,
        common.markdown(["who", "what", "n", "min ms", "median ms", "p95 ms", "max ms"], rows),
        f"Ratio of medians, kill -> running, supervisor / Docker: **{ratio:.2f}** (target <= 1.2). "
        f"Supervisor kill -> healthy minus the stand-in's own start -> healthy (median): **{overhead:.0f} ms** "
        "(target <= 500 ms).",
    )


def _age(started_at: str) -> float:
    return time.time() - _epoch(started_at)


def _epoch(text: str) -> float:
    parsed = parse_time(text)
    assert parsed is not None, text
    return parsed.timestamp()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
