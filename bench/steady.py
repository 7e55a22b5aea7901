"""Steady state: idle cost with 1 meta + 3 CeresDB nodes healthy, then /v1/status latency.

    .venv/bin/python bench/steady.py [SECONDS]        (default 60)

Idle: CPU (utime + stime from /proc) and RSS of the daemon over SECONDS with the default settings
(probe_interval 5 s), after the cluster is healthy and every shard is locked. Latency: 1000
sequential GET /v1/status on one keep-alive connection while the daemon supervises. The idle
table also quotes the figure measured before `/metrics` moved to prometheus_client (metricslib.py
measures that library alone).
"""

from __future__ import annotations

import http.client
import sys
import time

import common
from stats import summary

BEFORE = {
    "commit": "68a65a9",
    "code": "0045c46",
    "date": "2026-11-26",
    "percent": 0.3,
    "cpu_s": 0.18,
    "rss_mib": 59.6,
    "window_s": 60,
}
"""The idle figure of the previous bench/RESULTS.md, with the hand-written Prometheus writer: recorded
in commit 68a65a9, whose daemon code is that of 0045c46."""
MB_PER_MIB = 1.048576


def locked_shards(d: common.Daemon) -> set[int]:
    """The shards whose locks name the node meta assigned them to (at 1.2.2 meta opens one shard
    per 5 s tick, and a node may be assigned none)."""
    leases = [n.get("lease") or {} for n in d.status()["nodes"] if n["role"] == "ceresdb"]
    return {shard for lease in leases if lease.get("held") for shard in lease.get("shards") or []}


def status_latencies(d: common.Daemon, n: int) -> list[float]:
    host, port = d.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        conn.request("GET", "/v1/status")
        response = conn.getresponse()
        response.read()
        latencies.append((time.perf_counter() - started) * 1000)
        assert response.status == 200, response.status
    conn.close()
    return latencies


def main(seconds: int) -> None:
    run = common.Run("steady", [str(seconds)])
    settings = common.changed_settings({})
    with common.daemon(1, 3) as d:
        common.wait_for(d.ready, 180, "the cluster healthy", 0.2)
        shards = common.loading.load(d.config).spec.meta.shard_total
        common.wait_for(lambda: locked_shards(d) == set(range(shards)), 180, "every shard locked", 0.5)
        time.sleep(5)  # let start-up work (imports, first probes) settle before measuring
        [idle] = common.measure_idle([d.process.pid], seconds)
        latencies = status_latencies(d, 1000)
        state = d.status()["cluster"]["state"]

    mb = idle.rss_max_mib * MB_PER_MIB
    run.figure("idle_rss_mib", idle.rss_max_mib)
    run.table(
        "Idle cost: 1 meta + 3 CeresDB nodes healthy",
        ["code", "window s", "CPU s", "% of one core", "RSS MiB (max)", "RSS MB (max)"],
        [
            [
                "this run (`/metrics` by prometheus_client)",
                round(idle.window_s, 1),
                round(idle.cpu_s, 3),
                round(idle.percent, 3),
                round(idle.rss_max_mib, 1),
                round(mb, 1),
            ],
            [
                f"before: hand-written Prometheus writer (commit {BEFORE['code']}, measured {BEFORE['date']}, "
                f"quoted from bench/RESULTS.md of {BEFORE['commit']})",
                BEFORE["window_s"],
                BEFORE["cpu_s"],
                BEFORE["percent"],
                BEFORE["rss_mib"],
                round(BEFORE["rss_mib"] * MB_PER_MIB, 1),
            ],
        ],
        settings,
        f"Target: under 0.5 % of one core and under 70 MB (66.8 MiB). Peer: the lean loop of "
        f"docs/docker-baselines.md (events + 1 probe/s) costs 0.14 % and 41 MiB. Cluster state at the "
        f"end: {state}.",
    )
    run.target(
        "idle",
        f"{idle.percent:.2f} % of one core, {idle.rss_max_mib:.1f} MiB = {mb:.1f} MB "
        f"({seconds} s; before prometheus_client: {BEFORE['percent']} %, {BEFORE['rss_mib']} MiB)",
        idle.percent < 0.5 and mb < 70,
        settings,
    )

    s = summary(latencies)
    run.table(
        "GET /v1/status latency while supervising (1 meta + 3 CeresDB)",
        ["n", "min ms", "median ms", "p95 ms", "p99 ms", "max ms"],
        [[s["n"], *(f"{s[k]:.2f}" for k in ("min", "median", "p95", "p99", "max"))]],
        settings,
        "Sequential requests on one keep-alive connection. Target: median under 5 ms, p99 under 20 ms.",
    )
    run.target(
        "status-latency",
        f"{s['median']:.2f} ms median, {s['p99']:.2f} ms p99 (n={s['n']})",
        s["median"] < 5 and s["p99"] < 20,
        settings,
    )
    run.save()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 60)
