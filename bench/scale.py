"""Scale: 1 meta + 30 CeresDB stand-ins under one supervisor: cycle duration and CPU.

    .venv/bin/python bench/scale.py [SECONDS] [NODES]        (default 60 s, 30 CeresDB nodes)

Nodes on loopback addresses 127.0.0.1-30, each with its own ports. Cycle durations come from the
daemon's own histogram (`ceres_supervisor_reconcile_duration_seconds`) over the window.
"""

from __future__ import annotations

import sys
import time

import common

ASKED_NODES = 30
"""The target asks for 1 meta + 30 CeresDB nodes; another count is reported but not judged."""


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


def main(seconds: int, nodes: int) -> None:
    run = common.Run("scale", [str(seconds), str(nodes)])
    settings = common.changed_settings({})
    started = time.monotonic()
    with common.daemon(1, nodes) as d:
        common.wait_for(d.ready, 600, f"{nodes} CeresDB nodes healthy", 0.5)
        to_healthy = time.monotonic() - started
        time.sleep(5)
        sum0, n0, b0 = histogram(d)
        [idle] = common.measure_idle([d.process.pid], seconds)
        sum1, n1, b1 = histogram(d)
        cycles = n1 - n0
        mean_ms = (sum1 - sum0) / cycles * 1000 if cycles else float("nan")
        over = {le: b1[le] - b0.get(le, 0) for le in b1}
        p_under_200 = over.get(0.2, 0) / cycles * 100 if cycles else 0
        worst_bucket = min((le for le, c in over.items() if c >= cycles), default=float("inf"))
        state = d.status()["cluster"]["state"]
    run.table(
        f"Scale: 1 meta + {nodes} CeresDB nodes",
        [
            "window s",
            "cycles",
            "mean cycle ms",
            "cycles <= 200 ms",
            "slowest cycle <= (bucket)",
            "CPU % of one core",
            "RSS MiB (max)",
            "start -> healthy s",
        ],
        [
            [
                round(idle.window_s),
                int(cycles),
                f"{mean_ms:.1f}",
                f"{p_under_200:.0f} %",
                f"{worst_bucket * 1000:g} ms",
                f"{idle.percent:.2f}",
                f"{idle.rss_max_mib:.1f}",
                f"{to_healthy:.1f}",
            ]
        ],
        settings,
        "Cycle durations from the daemon's own histogram (`ceres_supervisor_reconcile_duration_seconds`) over "
        f"the window. Target: cycle under 200 ms, idle under 5 % of one core. Cluster state at the end: {state}.",
    )
    met = (cycles > 0 and worst_bucket <= 0.2 and idle.percent < 5) if nodes == ASKED_NODES else None
    run.target(
        "scale",
        f"mean cycle {mean_ms:.0f} ms, every cycle <= {worst_bucket * 1000:g} ms; "
        f"{idle.percent:.2f} % of one core ({nodes} CeresDB nodes, {seconds} s)",
        met,
        settings,
    )
    run.save()


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 60, int(sys.argv[2]) if len(sys.argv) > 2 else ASKED_NODES
    )
