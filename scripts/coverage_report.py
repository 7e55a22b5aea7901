"""Write tests/COVERAGE.md from the JSON reports `make coverage` leaves in its data directory.

One column per suite that ran (`unit.json`, `docker.json`, `serial.json`: branch coverage of each
suite alone) and the combined one (`all.json`), per module of ceres_supervisor, with the commit
measured and how each suite ended. Run by `make coverage`; not meant to be run by hand.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SUITES = {
    "unit": "unit",
    "docker": "Docker-backed (tests/emulator, tests/integration)",
    "serial": "serial (tests/serial)",
}
UNIT_OVERALL = 85.0
UNIT_MODULE = 75.0
NOTES = {
    "ceres_supervisor/adapters/engine.py": (
        "unit tests run the real Docker SDK against tests/unit/fakedocker.py (Docker's HTTP API "
        "in-process); what only a real dockerd does (its events after its own restart, a hung "
        "engine's sockets, images) is the Docker-backed suite's"
    ),
    "ceres_supervisor/observation/observer.py": (
        "unit: through the fake Docker Engine; a real dockerd restart (containers killed with it) "
        "is tests/serial's"
    ),
    "ceres_supervisor/daemon/app.py": (
        "unit: the whole daemon in-process (tests/unit/test_daemon_inprocess.py); signals to a real "
        "process, systemd's watchdog and several agents on real containers are the Docker-backed "
        "suite's (tests/integration/test_daemon.py, test_systemd.py, test_cluster.py)"
    ),
}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def measured_commit() -> str:
    commit = git("rev-parse", "--short=12", "HEAD")
    changed = [line for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
               if not line.endswith("tests/COVERAGE.md")]  # fmt: skip
    return commit + (" + uncommitted changes" if changed else "")


def percent(summary: dict[str, Any]) -> float:
    return float(summary["percent_covered"])


def units(summary: dict[str, Any]) -> int:
    return int(summary["num_statements"]) + int(summary.get("num_branches", 0))


def load(directory: Path, suite: str) -> dict[str, Any] | None:
    path = directory / f"{suite}.json"
    return json.loads(path.read_text()) if path.exists() else None


def status(directory: Path, suite: str) -> str:
    path = directory / f"{suite}.status"
    if not path.exists():
        return "not run"
    code = path.read_text().strip()
    return "passed" if code == "0" else f"pytest exit {code} (failures: see its output; coverage kept)"


def render(directory: Path) -> str:
    reports = {suite: load(directory, suite) for suite in [*SUITES, "all"]}
    ran = [s for s in SUITES if reports[s] is not None]
    combined = reports["all"]
    assert combined is not None, "no combined report: make coverage writes all.json"
    every = combined["files"]
    files = sorted(f for f in every if f.startswith("ceres_supervisor/") and units(every[f]["summary"]))
    header = ["module", "statements + branches", *(f"{s} %" for s in ran), "all %"]
    lines = [
        "# Coverage",
        "",
        f"Written by `make coverage` on commit {measured_commit()}, "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}. Branch coverage (coverage.py "
        f"{combined['meta']['version']}), statements and branches together. The Docker-backed "
        "suites count the daemons they start as processes (`ceres-supervisor run`, `python -m "
        "ceres_supervisor`: coverage's `patch = subprocess`); a daemon killed with SIGKILL (the "
        "chaos run, the agent-kill scenarios) leaves no data, so those columns are a lower bound.",
        "",
        "| suite | outcome |",
        "|---|---|",
        *(f"| {SUITES[s]} | {status(directory, s)} |" for s in SUITES),
        "",
    ]
    unit = reports.get("unit")
    if unit is not None:
        below = [
            f for f in files if f in unit["files"] and percent(unit["files"][f]["summary"]) < UNIT_MODULE
        ]
        overall = percent(unit["totals"])
        lines += [
            "## Targets (issue 23)",
            "",
            f"- unit branch coverage at least {UNIT_OVERALL:g}% overall: **{overall:.1f}%**, "
            + ("met" if overall >= UNIT_OVERALL else "**not met**"),
            f"- at least {UNIT_MODULE:g}% for every module: "
            + ("met" if not below else "**not met**: " + ", ".join(f"`{f}`" for f in below)),
            "",
        ]
    lines += ["## Per module", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for f in files:
        cells = [f"`{f.removeprefix('ceres_supervisor/')}`", str(units(combined["files"][f]["summary"]))]
        for suite in ran:
            report = reports[suite]
            assert report is not None
            cells.append(f"{percent(report['files'][f]['summary']):.0f}" if f in report["files"] else "-")
        cells.append(f"{percent(combined['files'][f]['summary']):.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    totals = ["**overall**", str(units(combined["totals"]))]
    totals += [f"**{percent(reports[s]['totals']):.1f}**" for s in ran]  # type: ignore[index]
    totals.append(f"**{percent(combined['totals']):.1f}**")
    lines += ["| " + " | ".join(totals) + " |", "", "## Where the rest is covered", ""]
    lines += [f"- `{module.removeprefix('ceres_supervisor/')}`: {note}." for module, note in NOTES.items()]
    lines += [
        "",
        "Reproduce: `make coverage` (every suite, as long as `make test`), or "
        "`make coverage COVERAGE_SUITES=unit` (the unit column alone, a minute).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data", type=Path, help="the directory make coverage wrote its reports to")
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "tests" / "COVERAGE.md")
    args = parser.parse_args()
    args.output.write_text(render(args.data))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
