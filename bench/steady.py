"""Steady state: idle cost with 1 meta + 3 CeresDB nodes healthy, then /v1/status latency.

    .venv/bin/python bench/steady.py [SECONDS]        (default 60)

Idle: CPU (utime + stime from /proc) and RSS of the daemon over SECONDS with the default settings
(probe_interval 5 s), after the cluster is healthy and every shard is locked. Latency: 1000
sequential GET /v1/status on one keep-alive connection while the daemon supervises.
"""

from __future__ import annotations

import http.client
import sys
import time

import common


def main(seconds: int) -> None:
    with common.daemon(1, 3) as d:
        common.wait_for(d.ready, 180, "the cluster healthy", 0.2)
        common.wait_for(lambda: all((n.get("lease") or {}).get("held") for n in d.status()["nodes"]
                                    if n["role"] == "ceresdb"), 120, "every shard locked", 0.5)
        time.sleep(5)  # let start-up work (imports, first probes) settle before measuring
        cpu, window, rss = common.measure_idle(d, seconds)
        percent = cpu / window * 100
        host, port = d.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        latencies = []
        for _ in range(1000):
            started = time.perf_counter()
            conn.request("GET", "/v1/status")
            response = conn.getresponse()
            response.read()
            latencies.append((time.perf_counter() - started) * 1000)
            assert response.status == 200
        conn.close()
        state = d.status()["cluster"]["state"]
    command = f".venv/bin/python bench/steady.py {seconds}"
    common.record(
        "Idle cost: 1 meta + 3 CeresDB nodes healthy", command,
        common.markdown(["window s", "CPU s", "% of one core", "RSS MiB (max)", "target"],
                        [[round(window, 1), round(cpu, 3), round(percent, 3), rss,
                          "< 0.5 % and < 70 MiB"]]),
        f"Peer: the lean loop of reference/docker-baselines.md (events + 1 probe/s) costs 0.14 % and 41 MiB. "
        f"Cluster state at the end: {state}.",
    )
    s = common.summary(latencies)
    common.record(
        "GET /v1/status latency while supervising (1 meta + 3 CeresDB)", command,
        common.markdown(["n", "min ms", "median ms", "p99 ms", "max ms", "target"],
                        [[s["n"], round(s["min"], 2), round(s["median"], 2), round(s["p99"], 2), round(s["max"], 2),
                          "median < 5 ms, p99 < 20 ms"]]),
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 60)
