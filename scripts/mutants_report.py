"""Write tests/MUTANTS.md from the results `mutmut run` left under mutants/ (run by `make mutants`).

The score counts a mutant as killed when a unit test failed on it (or it never finished: a
timeout). Every mutant that was not killed is listed with its diff and what a person wrote about
it in tests/mutants.toml: why it is equivalent, or which test kills it now. A note whose diff no
longer matches the mutant (the code moved, mutmut renumbered) is shown as stale, so a note never
vouches for a mutant it was not written for.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from mutmut.stats import status_by_exit_code

ROOT = Path(__file__).resolve().parents[1]
NOTES = ROOT / "tests" / "mutants.toml"
DETECTED = ("killed", "timeout", "caught by type check")


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def measured_commit() -> str:
    commit = git("rev-parse", "--short=12", "HEAD")
    changed = [line for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
               if not line.endswith("tests/MUTANTS.md")]  # fmt: skip
    return commit + (" + uncommitted changes" if changed else "")


def results() -> dict[str, tuple[str, str]]:
    """mutant name -> (module path, status), for every module mutmut mutated."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    found = {}
    for module in config["only_mutate"]:
        meta = ROOT / "mutants" / (module + ".meta")
        if not meta.exists():
            raise SystemExit(f"{meta} is missing: run `make mutants` (mutmut run) first")
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        for name, code in codes.items():
            found[name] = (module, status_by_exit_code[code] if code is not None else "not checked")
    return found


def diff_of(name: str) -> str:
    mutmut = str(Path(sys.executable).parent / "mutmut")
    done = subprocess.run([mutmut, "show", name], cwd=ROOT, capture_output=True, text=True, check=False)
    shown = done.stdout
    return "\n".join(
        line for line in shown.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))
    )


def render() -> str:
    found = results()
    notes = tomllib.loads(NOTES.read_text()) if NOTES.exists() else {}
    statuses = Counter(status for _m, status in found.values())
    detected = sum(statuses[s] for s in DETECTED)
    score = 100.0 * detected / len(found) if found else 0.0
    per_module: dict[str, Counter[str]] = {}
    for module, status in found.values():
        per_module.setdefault(module, Counter())[status] += 1
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Mutation testing",
        "",
        f"Written by `make mutants` on commit {measured_commit()}, {when}: "
        "mutmut (`[tool.mutmut]` in pyproject.toml) over the decision modules, against tests/unit only.",
        "",
        f"**{score:.1f}% killed**: {detected} of {len(found)} mutants "
        f"({', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))}).",
        "",
        "| module | mutants | killed | not killed |",
        "|---|---|---|---|",
    ]
    for module, counts in sorted(per_module.items()):
        done = sum(counts[s] for s in DETECTED)
        lines.append(f"| `{module}` | {sum(counts.values())} | {done} | {sum(counts.values()) - done} |")
    survivors = sorted(name for name, (_m, status) in found.items() if status not in DETECTED)
    lines += ["", f"## Not killed ({len(survivors)})", ""]
    if not survivors:
        lines.append("None.")
    for name in survivors:
        module, status = found[name]
        diff = diff_of(name)
        note = notes.get(name)
        if note is None:
            why = "**no note yet**"
        elif note.get("diff", "").strip() != diff.strip():
            why = f"**stale note** (written for another diff): {note.get('why', '')}"
        else:
            why = note.get("why", "")
        lines += [f"### `{name}` ({status})", "", "```diff", diff, "```", "", why, ""]
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    out = ROOT / "tests" / "MUTANTS.md"
    out.write_text(render())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
