"""Scale: 1 meta + 30 CeresDB stand-ins under one supervisor: cycle duration and CPU.

    .venv/bin/python bench/scale.py [SECONDS]        (default 60)

Nodes on loopback addresses 127.0.0.1-30, each with its own ports. Cycle durations come from the
daemon's own histogram (`ceres_supervisor_reconcile_duration_seconds`) over the window.
"""

from __future__ import annotations

import sys
import time

import common


def histogram(d: common.Daemon) -> tuple[float, float, dict[float, float]]:
    _code, body = common.http_get(f"{d.url}/metrics")
    total = count = 0.0
    buckets: dict[float, float] = {}
    for line in body.decode().splitlines():
        if line.startswith("ceres_supervisor_reconcile_duration_seconds_sum"):
            total = float(line.split()[-1])
        elif line.startswith("ceres_supervisor_reconcile_duration_seconds_count"):
            count = float(line.split()[-1])
        elif line.startswith("ceres_supervisor_reconcile_duration_seconds_bucket"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float("inf") if bound == "+Inf" else float(bound)] = float(line.split()[-1])
    return total, count, buckets


def main(seconds: int) -> None:
    started = time.monotonic()
    with common.daemon(1, 30) as d:
        common.wait_for(d.ready, 600, "30 CeresDB nodes healthy", 0.5)
        to_healthy = time.monotonic() - started
        time.sleep(5)
        sum0, n0, b0 = histogram(d)
        cpu, window, rss = common.measure_idle(d, seconds)
        sum1, n1, b1 = histogram(d)
        cycles = n1 - n0
        mean_ms = (sum1 - sum0) / cycles * 1000 if cycles else float("nan")
        over = {le: b1[le] - b0.get(le, 0) for le in b1}
        p_under_200 = over.get(0.2, 0) / cycles * 100 if cycles else 0
        worst_bucket = min((le for le, c in over.items() if c >= cycles), default=float("inf"))
        state = d.status()["cluster"]["state"]
    command = f".venv/bin/python bench/scale.py {seconds}"
    common.record(
        "Scale: 1 meta + 30 CeresDB nodes", command,
        common.markdown(["cycles", "mean cycle ms", "cycles <= 200 ms", "slowest cycle <= (bucket)", "CPU % of one core",
                         "RSS MiB", "start -> healthy s", "target"],
                        [[int(cycles), round(mean_ms, 1), f"{p_under_200:.0f} %", f"{worst_bucket * 1000:g} ms",
                          round(cpu / window * 100, 2), rss, round(to_healthy, 1),
                          "cycle < 200 ms, idle < 5 %"]]),
        f"Cluster state at the end: {state}.",
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 60)
