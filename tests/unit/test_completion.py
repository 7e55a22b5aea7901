"""Bash completion: the script from the real parser, run by real bash, asking the real CLI for node
names (`ceres-supervisor completion nodes`, from the virtualenv's bin on PATH). No stubs."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ceres_supervisor.cli import commands, completion

from .conftest import BASE

BIN = Path(sys.executable).parent
HOSTILE = "$(touch {marker})"


def visible_subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    shown = {a.dest for a in sub._choices_actions}
    return {name: p for name, p in sub.choices.items() if name in shown}


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The script as `ceres-supervisor completion bash` prints it."""
    path = tmp_path_factory.mktemp("completion") / "ceres-supervisor.bash"
    done = subprocess.run(
        [sys.executable, "-m", "ceres_supervisor", "completion", "bash"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    path.write_text(done.stdout)
    return path


def complete(script: Path, *words: str, cwd: Path | None = None) -> list[str]:
    """COMPREPLY for the command line `words` (the last one is being completed), in real bash."""
    assert (BIN / "ceres-supervisor").exists(), f"no ceres-supervisor in {BIN}: pip install -e ."
    program = (
        f"source {shlex.quote(str(script))}; COMP_WORDS=({' '.join(map(shlex.quote, words))}); "
        'COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _ceres_supervisor; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        ["bash", "-c", program], capture_output=True, text=True, timeout=60, env=env, cwd=cwd, check=False
    )
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line]


@pytest.fixture
def cluster_file(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(BASE)
    return path


def test_the_script_names_every_subcommand_and_long_option() -> None:
    parser = commands.build_parser()
    text = completion.bash_script(parser)
    subcommands = visible_subcommands(parser)
    assert {"validate", "run", "status", "pause", "resume", "restart", "rolling-restart"} <= set(subcommands)
    for name, sub in subcommands.items():
        assert f"\n        {name})\n" in text, name
        for action in sub._actions:
            for option in action.option_strings:
                if action.help != argparse.SUPPRESS:
                    assert f" {option}" in text, (name, option)
    top = next(line for line in text.splitlines() if "validate render" in line)
    assert "nodes" not in top.split()  # no hidden helper command: the names come from `completion nodes`
    assert "complete -F _ceres_supervisor ceres-supervisor" in text
    assert "compgen -W" not in text  # it would expand $(...) in node names
    checked = subprocess.run(
        ["bash", "-n"], input=text, capture_output=True, text=True, timeout=30, check=False
    )
    assert checked.returncode == 0, checked.stderr


def test_exactly_as_a_user_sources_it() -> None:
    program = (
        f"source <({shlex.quote(sys.executable)} -m ceres_supervisor completion bash); "
        'COMP_WORDS=(ceres-supervisor pa); COMP_CWORD=1; _ceres_supervisor; echo "${COMPREPLY[@]}"'
    )
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout.strip()) == (0, "pause"), done.stderr


def test_subcommands(script: Path) -> None:
    assert complete(script, "ceres-supervisor", "re") == ["render", "reload", "resume", "restart", "restore"]
    words = complete(script, "ceres-supervisor", "")
    assert set(visible_subcommands(commands.build_parser())) | {"--version", "-h", "--help"} == set(words)
    assert complete(script, "ceres-supervisor", "--ver") == ["--version"]


def test_options_and_their_choices(script: Path, tmp_path: Path) -> None:
    assert {"--json", "--local", "--url", "--socket", "--config", "--token-file"} <= set(
        complete(script, "ceres-supervisor", "status", "--")
    )
    assert complete(script, "ceres-supervisor", "rolling-restart", "--role", "") == ["meta", "ceresdb"]
    assert complete(script, "ceres-supervisor", "run", "-c", "x.toml", "--log-level", "w") == ["warning"]
    assert complete(script, "ceres-supervisor", "completion", "") == ["bash", "nodes"]
    assert complete(script, "ceres-supervisor", "run", "--listen", "") == []  # an address: nothing to guess
    (tmp_path / "cluster.toml").write_text("")
    (tmp_path / "out").mkdir()
    assert complete(script, "ceres-supervisor", "validate", "-c", "clu", cwd=tmp_path) == ["cluster.toml"]
    assert complete(script, "ceres-supervisor", "render", "-c", "cluster.toml", "-o", "", cwd=tmp_path) == [
        "out"
    ]


def test_node_names_from_the_file_on_the_line(script: Path, cluster_file: Path) -> None:
    f = str(cluster_file)
    assert complete(script, "ceres-supervisor", "pause", "-c", f, "") == ["meta0", "db0", "db1"]
    assert complete(script, "ceres-supervisor", "resume", "--config", f, "db0", "d") == ["db0", "db1"]
    assert complete(script, "ceres-supervisor", "pause", "--config", "=", f, "m") == ["meta0"]
    assert complete(script, "ceres-supervisor", "restart", "--url", "http://x", "-c", f, "db") == [
        "db0",
        "db1",
    ]
    # restart takes one node: after it, options
    assert "--no-wait" in complete(script, "ceres-supervisor", "restart", "-c", f, "db1", "")
    assert complete(script, "ceres-supervisor", "pause", "-c", f, "--a") == ["--all"]
    complete(
        script, "ceres-supervisor", "pause", ""
    )  # no -c: the helper's default file, absent or not: no error


def test_node_names_are_never_run_by_the_shell(script: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hostile = HOSTILE.format(marker=marker)
    path = tmp_path / "hostile.toml"
    path.write_text(BASE + f'\n[[ceresdb.nodes]]\nname = "{hostile}"\nhost = "127.0.0.1"\n')
    assert complete(script, "ceres-supervisor", "pause", "-c", str(path), "") == [
        "meta0",
        "db0",
        "db1",
        hostile,
    ]
    assert complete(script, "ceres-supervisor", "restart", "-c", str(path), "$") == [hostile]
    assert not marker.exists()
