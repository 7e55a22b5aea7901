"""bench/RESULTS.md describes code of this history and answers every target; the
benchmarks' percentile interpolates.

RESULTS.md is written whole by `make bench` (bench/report.py): each table's heading names the
commit it measured, which must be an ancestor of HEAD (a file from another branch, or edited by
hand, fails here).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from bench.stats import percentile

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "RESULTS.md"
HEADING = re.compile(
    r"^### .+ \(commit (?P<commit>[0-9a-f]{7,40})(?: \+ uncommitted changes)?, "
    r"\d{4}-\d\d-\d\d \d\d:\d\d UTC, [^,()]+\)$"
)
TARGETS = (
    # Every target, by the name its row carries in the summary.
    "Detection",
    "Recovery: running",
    "Recovery: healthy",
    "Idle cost",
    "GET /v1/status",
    "Cold start",
    "Scale",
    "Repeated crashes",
    "Several machines: a change seen on another host",
    "Several machines: GET /v1/cluster",
    "Several machines: an agent SIGKILLed",
    "Several machines: stops by choice",
    "Benchmarks say what they measured",
)


def results() -> str:
    return RESULTS.read_text()


def table_headings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("### ")]


def summary_rows(text: str) -> dict[str, list[str]]:
    """First cell -> the row's cells, from the table under `## Summary`."""
    section = text.split("\n## Summary", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def test_every_table_heading_names_its_commit_date_and_machine_and_its_settings() -> None:
    lines = results().splitlines()
    headings = [i for i, line in enumerate(lines) if line.startswith("### ")]
    assert headings, "no table in bench/RESULTS.md"
    for i in headings:
        assert HEADING.match(lines[i]), f"heading without commit, date and machine: {lines[i]!r}"
        assert lines[i + 2].startswith("Settings changed from the defaults: "), lines[i]


def test_every_commit_named_is_an_ancestor_of_head() -> None:
    commits = {m["commit"] for line in table_headings(results()) if (m := HEADING.match(line))}
    assert commits
    for commit in sorted(commits):
        found = subprocess.run(["git", "merge-base", "--is-ancestor", commit, "HEAD"], cwd=ROOT, check=False)
        assert found.returncode == 0, f"bench/RESULTS.md measured {commit}, which is not an ancestor of HEAD"


def test_the_summary_has_a_row_for_every_target() -> None:
    rows = summary_rows(results())
    missing = [name for name in TARGETS if name not in rows]
    assert not missing, f"no summary row for {missing}"


def test_every_target_is_met() -> None:
    """A target not met (or not judged, or not measured) is a failure of the code it measured, not a
    row to read past: the targets are what the supervisor must achieve."""
    rows = summary_rows(results())
    unmet = {name: rows[name][-1] for name in TARGETS if name in rows and rows[name][-1] != "met"}
    assert not unmet, f"bench/RESULTS.md: targets not met: {unmet}"


@pytest.mark.parametrize(
    ("values", "p", "expected"),
    [
        ([5.0], 95, 5.0),
        ([1.0, 2.0], 50, 1.5),
        ([1.0, 2.0, 3.0, 4.0], 0, 1.0),
        ([1.0, 2.0, 3.0, 4.0], 25, 1.75),
        ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
        ([4.0, 1.0, 3.0, 2.0], 50, 2.5),  # unsorted input
        ([float(i) for i in range(1, 21)], 95, 19.05),  # n = 20: p95 is not the maximum
        ([float(i) for i in range(1, 21)], 99, 19.81),
        ([float(i) for i in range(1, 1001)], 99, 990.01),
        ([10.0, 10.0, 10.0, 40.0], 90, 31.0),
    ],
)
def test_percentile_interpolates_linearly_like_numpy(values: list[float], p: float, expected: float) -> None:
    assert percentile(values, p) == pytest.approx(expected)


@pytest.mark.parametrize(("values", "p"), [([], 50), ([1.0], -1), ([1.0], 101)])
def test_percentile_refuses_what_has_no_answer(values: list[float], p: float) -> None:
    with pytest.raises(ValueError):
        percentile(values, p)
