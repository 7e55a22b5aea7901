"""Writes bench/RESULTS.md, whole, from the JSON the benchmarks saved in bench/.results/.

    .venv/bin/python bench/report.py [OUTPUT]        (the last step of `make bench`; default bench/RESULTS.md)

Each script (restart.py, crashes.py, ...) prints its tables and saves them, with the commit, date,
machine and the settings it changed from the defaults, in bench/.results/<script>.json. This
file turns those into Markdown, in a fixed order, under a summary that maps every
target to the figure measured and whether it is met. Pure formatting: no Docker, no daemon.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Final

BENCH = Path(__file__).resolve().parent
RESULTS_DIR: Final = BENCH / ".results"
RESULTS_MD: Final = BENCH / "RESULTS.md"

SCRIPTS: Final = (
    "restart",
    "crashes",
    "steady",
    "metricslib",
    "coldstart",
    "scale",
    "cluster",
    "cluster_chaos",
    "storeclient",
    "backup",
    "upgrade",
)
"""The scripts in the order of `make bench`, which is also their order in RESULTS.md."""

TARGETS: Final = (
    ("detection", "Detection", "SIGKILL -> the supervisor has recorded the death: median < 100 ms"),
    (
        "recovery-running",
        "Recovery: running",
        "SIGKILL -> container running again: median <= 1.2 x Docker's restart policy, side by side",
    ),
    (
        "recovery-healthy",
        "Recovery: healthy",
        "SIGKILL -> `GET /` answering: within 0.5 s of the time the stand-in itself needs",
    ),
    ("idle", "Idle cost", "1 meta + 3 CeresDB healthy: < 0.5 % of one core, < 70 MB RSS"),
    ("status-latency", "GET /v1/status", "median < 5 ms, p99 < 20 ms while the loop runs"),
    ("coldstart", "Cold start", "3 meta + 3 CeresDB ready within 2 s of the floor"),
    ("scale", "Scale", "1 meta + 30 CeresDB: cycle < 200 ms, idle < 5 % of one core"),
    (
        "crashes",
        "Repeated crashes",
        "default settings, 6 SIGKILLs in a row: both series reported, the backoff exactly by its rules",
    ),
    ("cluster-change", "Several machines: a change seen on another host", "median < 250 ms"),
    ("cluster-latency", "Several machines: GET /v1/cluster", "median < 10 ms"),
    (
        "cluster-agent",
        "Several machines: an agent SIGKILLed",
        "its nodes `unknown` on the others within agent_ttl + 1 s",
    ),
    (
        "cluster-docker-frozen",
        "Partial failures: a machine's Docker frozen",
        "its nodes `unknown` on the others within agent_ttl + 1 s",
    ),
    (
        "cluster-chaos",
        "Several machines and partial failures: stops by choice and pauses",
        "in a 10-minute chaos run with frozen Docker, an agent partitioned from its etcd member and meta "
        "answering 500: zero stops by choice beyond the budget, zero pauses lost",
    ),
    ("backup", "Day two: backup", "a meta holding 10,000 keys backed up in under 1 s"),
    (
        "upgrade",
        "Day two: rolling upgrade",
        "3 meta + 3 CeresDB within 1.2 x its floor (the same steps by hand)",
    ),
    (
        "provenance",
        "Benchmarks say what they measured",
        "settings changed from the defaults next to each figure; RESULTS.md regenerated on the code it describes",
    ),
)
"""(key, name, target) of every target; a script reports a key it measured."""

NOT_MEASURED_BY_BENCH: Final[dict[str, str]] = {}
"""key -> why, for a target that no script of `make bench` measures (none today)."""


def heading(run: dict[str, Any]) -> str:
    """`<commit>[ + uncommitted changes], <date>, <host>`: what every table's heading names."""
    commit = run["commit"] + (" + uncommitted changes" if run["dirty"] else "")
    return f"commit {commit}, {run['date']}, {run['host']}"


def table_markdown(run: dict[str, Any], table: dict[str, Any]) -> str:
    """One table as it is printed and as it stands in RESULTS.md."""
    lines = [
        f"### {table['title']} ({heading(run)})",
        "",
        f"Settings changed from the defaults: **{table['settings']}**. "
        f"`{run['command']}` on {run['machine']}.",
        "",
        "| " + " | ".join(table["headers"]) + " |",
        "|" + "---|" * len(table["headers"]),
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in table["rows"]]
    if table.get("notes"):
        lines += ["", table["notes"]]
    return "\n".join(lines) + "\n"


def duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"


def verdict(met: bool | None) -> str:
    """None: measured, but not as the target asks (fewer nodes or crashes): not judged."""
    return {True: "met", False: "**not met**", None: "not judged"}[met]


def summary(runs: dict[str, dict[str, Any]]) -> str:
    measured: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for run in runs.values():
        for key, found in run.get("targets", {}).items():
            measured[key] = (run, found)
    tables = sum(len(run["tables"]) for run in runs.values())
    measured["provenance"] = (
        next(iter(runs.values()), {"commit": "?"}),
        {
            "measured": f"each of the {tables} tables below names its commit, date and machine in its heading and "
            "the settings it changed on the line under it; this file was written by bench/report.py",
            "met": bool(runs),
        },
    )
    lines = ["| what | target | measured | settings changed from the defaults | |", "|---|---|---|---|---|"]
    for key, name, target in TARGETS:
        if key in measured:
            _run, found = measured[key]
            lines.append(
                f"| {name} | {target} | {found['measured']} | {found.get('settings', '-')} "
                f"| {verdict(found['met'])} |"
            )
        else:
            why = NOT_MEASURED_BY_BENCH.get(key, "not run (its script saved nothing)")
            lines.append(f"| {name} | {target} | {why} | - | not measured |")
    return "\n".join(lines) + "\n"


def render(runs: dict[str, dict[str, Any]]) -> str:
    """The whole of RESULTS.md from the runs of this `make bench`, keyed by script."""
    commits = sorted({heading(run).split(",")[0].removeprefix("commit ") for run in runs.values()})
    total = sum(run["duration_s"] for run in runs.values())
    parts = [
        "# Benchmark results\n",
        "Written by `make bench` (bench/report.py, from the JSON each script saved in bench/.results/); "
        "do not edit by hand, run `make bench` again. Faults are injected with "
        "`kill -9` of the container's main process (`State.Pid`): Docker treats `docker kill` as a manual stop "
        "and would not restart. Percentiles interpolate linearly between ranks (numpy's default). Every "
        "table's heading names the commit it measured, the date and the machine; the line under it, the "
        "supervisor settings it changed from the defaults of `ceres_supervisor.model.spec.SupervisorSection`.\n",
        f"## Summary (commit {', '.join(commits) or '?'}; the scripts took {duration(total)} in all)\n",
        summary(runs),
    ]
    for script in SCRIPTS:
        run = runs.get(script)
        if run is None:
            parts.append(f"## {script}.py\n\nNot run: bench/.results/{script}.json is missing.\n")
            continue
        parts.append(f"## {script}.py (took {duration(run['duration_s'])})\n")
        parts.extend(table_markdown(run, table) for table in run["tables"])
    return "\n".join(parts)


def load(directory: Path = RESULTS_DIR) -> dict[str, dict[str, Any]]:
    runs = {}
    for script in SCRIPTS:
        path = directory / f"{script}.json"
        if path.exists():
            runs[script] = json.loads(path.read_text())
    return runs


def main(output: Path = RESULTS_MD) -> int:
    runs = load()
    if not runs:
        print(f"nothing in {RESULTS_DIR}: run the benchmarks first (make bench)", file=sys.stderr)
        return 1
    missing = [s for s in SCRIPTS if s not in runs]
    output.write_text(render(runs))
    print(f"wrote {output} from {len(runs)} runs" + (f"; missing: {', '.join(missing)}" if missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS_MD))
