"""The cost of the metrics library alone: prometheus_client, which replaced a hand-written writer.

    .venv/bin/python bench/metricslib.py [REPS]        (default 5)

Each repetition runs bench/metricschild.py in a fresh Python process, twice: over a bare baseline
(the project's model and planner imported) and over the daemon's baseline (aiohttp and the Docker
client imported too, so the stdlib modules they share with prometheus_client are not counted
again). It reads its own VmRSS before and after `import prometheus_client`, after building
`ceres_supervisor.surfaces.metrics.Metrics(...)` over a healthy plan of 1 meta + 3 CeresDB nodes, and the
CPU time of 1000 `exposition()` calls, each the whole `/metrics` body. No Docker, no daemon: the
daemon's idle cost, now and before the change, is in steady.py's table.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import common

CHILD = Path(__file__).resolve().parent / "metricschild.py"
CALLS = 1000
MODES = (("bare", "model + planner"), ("daemon", "+ aiohttp + Docker client"))


def main(reps: int) -> None:
    run = common.Run("metricslib", [str(reps)])
    samples: dict[str, list[dict[str, float]]] = {mode: [] for mode, _label in MODES}
    for _ in range(reps):
        for mode, found in samples.items():
            out = subprocess.run(
                [sys.executable, str(CHILD), mode], capture_output=True, text=True, check=True
            )
            found.append(json.loads(out.stdout))

    def median(mode: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[mode])

    rows = []
    for what, key, previous in (
        ("the baseline (RSS MiB)", "before", None),
        ("+ `import prometheus_client`", "imported", "before"),
        ("+ `ceres_supervisor.surfaces.metrics` imported, `Metrics(...)` built", "built", "imported"),
        (f"+ {CALLS} `exposition()` calls", "after", "built"),
    ):
        cells = [
            f"{median(m, key):.1f}" if previous is None else f"{median(m, key) - median(m, previous):+.1f}"
            for m, _label in MODES
        ]
        rows.append([what, *cells])
    cpu_us = median("daemon", "cpu_s") / CALLS * 1e6
    rows.append(
        [
            f"CPU per `exposition()` call, us (median of {CALLS})",
            *(f"{median(m, 'cpu_s') / CALLS * 1e6:.0f}" for m, _label in MODES),
        ]
    )
    added = median("daemon", "built") - median("daemon", "before")
    first = samples["daemon"][0]
    run.table(
        f"Metrics library alone: prometheus_client {first['version']} (median of {reps} fresh processes)",
        ["what", *(f"over {label} (MiB)" for _mode, label in MODES)],
        rows,
        "none (no daemon: the library in a fresh process)",
        f"What the library adds to the daemon: **{added:+.1f} MiB** and **{cpu_us:.0f} us** of CPU per scrape "
        f"(the `/metrics` body is {first['bytes']:.0f} bytes; a scrape every 15 s costs "
        f"{cpu_us / 15 / 1e4:.4f} % of one core). The daemon's idle cost with it, and the figure measured before "
        "it (the hand-written writer), are in steady.py's table.",
    )
    run.save()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
