"""The docs are true on their own: every link and every path they name is in the repository, no
file points at documents outside it, the exit codes README tables are the command line's, and
the figures README quotes are those of bench/RESULTS.md."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from ceres_supervisor.cli import exits

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
OUTSIDE = re.compile(
    "|".join(
        [
            *map(re.escape, ["../" + "shared", "shared/" + "reference", "reference" + "/", "STYLE" + ".md"]),
            r"\b" + "SP" + "EC" + r"\b",  # the word, not a name such as a mutant's upper-cased key
        ]
    )
)
"""What pointed at the team's notes outside the repository (a clone does not have them); spelt in
pieces so that this line does not match itself."""
PATHS = re.compile(r"`((?:etc|scripts|systemd|docs|bench|tests|testkit|ceres_supervisor)/[^`\s]*)`")
FIGURE = re.compile(r"\d+(?:\.\d+)? ?(?:ms|s|%|MiB|MB|min)\b")


def tracked(pattern: str = "*") -> list[Path]:
    names = subprocess.run(
        ["git", "ls-files", "-z", "--", pattern], cwd=ROOT, capture_output=True, check=True
    )
    return [ROOT / name for name in names.stdout.decode().split("\0") if name and (ROOT / name).is_file()]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", markdown.read_text(), re.M)}


@pytest.mark.parametrize("markdown", tracked("*.md"), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves_in_the_repository(markdown: Path) -> None:
    text = markdown.read_text()
    for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (markdown.parent / path).resolve() if path else markdown
        assert file.is_file(), f"{markdown.name}: link to {target}: no such file"
        assert ROOT in file.parents or file == ROOT, f"{markdown.name}: {target} leaves the repository"
        if anchor:
            assert anchor in anchors(file), f"{markdown.name}: {target}: no heading #{anchor} in {file.name}"
    if markdown.parent == ROOT / "docs":
        return  # notes on the servers: their paths are the upstream repositories'
    for path in PATHS.findall(text):
        if "<" in path or "*" in path or "..." in path:
            continue  # a pattern (config/<node>/), not a file
        assert (ROOT / path.rstrip("/")).exists(), (
            f"{markdown.name} names `{path}`, which is not in the repository"
        )


def test_nothing_points_at_files_outside_the_repository() -> None:
    found = []
    for path in tracked():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue  # images
        found += [
            f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
            for n, line in enumerate(text.splitlines(), 1)
            if OUTSIDE.search(line)
        ]
    assert not found, "\n".join(found)


def test_the_exit_codes_readme_tables_are_the_command_line_s() -> None:
    text = README.read_text().split("### Exit codes\n", 1)[1].split("\n\n###", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", text, re.M)
    assert [(int(code), meaning) for code, meaning in rows] == list(exits.TABLE)


def test_the_figures_readme_quotes_are_those_of_bench_results() -> None:
    results = (ROOT / "bench" / "RESULTS.md").read_text()
    paragraphs = re.split(r"\n\s*\n|\n(?=- )", README.read_text())
    quoting = [p for p in paragraphs if "RESULTS.md" in p]
    assert len(quoting) >= 2
    for paragraph in quoting:
        for figure in FIGURE.findall(paragraph):
            assert figure in results, (
                f"README quotes {figure!r}, which bench/RESULTS.md does not say: {paragraph!r}"
            )
