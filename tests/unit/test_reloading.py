"""What a running daemon refuses to change on reload, each with its key path: pure, no daemon."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ceres_supervisor.daemon.reloading import static_problems
from ceres_supervisor.desired import loading
from ceres_supervisor.model.spec import DesiredState
from ceres_supervisor.model.versions import parse_release

from .conftest import BASE

THREE_META = BASE.replace(
    '[[meta.nodes]]\nname = "meta0"\nhost = "127.0.0.1"\n',
    "".join(
        f'[[meta.nodes]]\nname = "meta{i}"\nhost = "127.0.0.1"\nclient_port = {2379 + 10 * i}\n'
        f"peer_port = {2380 + 10 * i}\nhttp_port = {8080 + i}\n\n"
        for i in range(3)
    ),
)


def spec(tmp_path: Path, text: str, name: str) -> DesiredState:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return loading.load(path).spec


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda t: t.replace("[cluster]\n", '[cluster]\nname = "other"\n'), "cluster.name"),
        (
            lambda t: t.replace('state_dir = "/var/lib/ceres-supervisor"', 'state_dir = "/srv/x"'),
            "cluster.state_dir",
        ),
        (
            lambda t: t.replace("[cluster]\n", '[cluster]\nflavor = "horaedb"\nversion = "2.0.0"\n').replace(
                "mysql_port = 3308", "mysql_port = 3308\npostgresql_port = 5434"
            ),
            "cluster.flavor",
        ),
        (lambda t: t.replace('name = "meta2"', 'name = "meta9"'), "meta.nodes"),
        (lambda t: t.replace("client_port = 2399", "client_port = 2499"), "meta.nodes"),
        (lambda t: t.replace("peer_port = 2400", "peer_port = 2500"), "meta.nodes"),
        # A member moved to another machine, and three members cut to one: etcd keeps its member
        # list, so either would leave a member that no longer exists in the quorum.
        (
            lambda t: t.replace('name = "meta2"\nhost = "127.0.0.1"', 'name = "meta2"\nhost = "127.0.0.2"'),
            "meta.nodes",
        ),
        (lambda t: re.sub(r'\[\[meta\.nodes\]\]\nname = "meta[12]"\n(?:[^\n]+\n)+\n', "", t), "meta.nodes"),
    ],
)
def test_a_change_that_would_start_nodes_on_other_data_or_members_is_refused(
    tmp_path: Path, change: object, key: str
) -> None:
    running = spec(tmp_path, THREE_META, "running")
    new = spec(tmp_path, change(THREE_META), "new")  # type: ignore[operator]
    problems = static_problems(running, new)
    assert [p.path for p in problems] == [key], problems
    assert "cannot change" in problems[0].message


def test_a_meta_member_s_http_port_and_everything_else_may_change(tmp_path: Path) -> None:
    running = spec(tmp_path, THREE_META, "running")
    new = spec(tmp_path, THREE_META.replace("http_port = 8082", "http_port = 8092") + "\n", "new")
    assert static_problems(running, new) == []


def at(text: str, version: str, flavor: str = "ceresdb", keep: bool = False) -> str:
    """THREE_META at `version` (PostgreSQL ports from 1.2.6, as the servers open them)."""
    head = f'[cluster]\nflavor = "{flavor}"\nversion = "{version}"\n' + (
        "keep_ceresdb_data = true\n" if keep else ""
    )
    text = text.replace("[cluster]\n", head)
    if version >= "1.2.6" or flavor == "horaedb":
        text = text.replace("mysql_port = 3308", "mysql_port = 3308\npostgresql_port = 5434")
    return text


@pytest.mark.parametrize(
    ("old", "new", "sources", "expected"),
    [
        (("1.2.4",), ("1.2.5",), (), []),
        (("1.2.7",), ("2.0.0", "horaedb", True), (), []),  # the flavor changes, the 1.x data kept
        (
            ("1.2.7",),
            ("2.0.0", "horaedb"),
            (),
            [
                "cluster.flavor: cannot change from 'ceresdb' to 'horaedb': "
                "ceresdb 1.2.7 -> horaedb 2.0.0 needs cluster.keep_ceresdb_data"
            ],
        ),
        (
            ("2.0.0", "horaedb", True),
            ("1.2.7",),
            (),
            [
                "cluster.flavor: cannot change from 'horaedb' to 'ceresdb': "
                "horaedb 2.0.0 -> ceresdb 1.2.7: no way back"
            ],
        ),
        # In the middle of an upgrade the containers decide: CeresDB still runs 1.2.6.
        (
            ("1.2.7",),
            ("2.0.0", "horaedb", True),
            ("ceresdb 1.2.6",),
            [
                "cluster.flavor: cannot change from 'ceresdb' to 'horaedb': ceresdb 1.2.6 -> horaedb 2.0.0 skips a required step"
            ],
        ),
        (
            ("2.0.0", "horaedb", True),
            ("2.0.0", "horaedb"),
            (),
            ["cluster.keep_ceresdb_data: cannot change while the cluster runs"],
        ),
    ],
)
def test_an_upgrade_follows_the_pair_table(
    tmp_path: Path, old: tuple, new: tuple, sources: tuple, expected: list[str]
) -> None:
    running = spec(tmp_path, at(THREE_META, *old), "running")
    changed = spec(tmp_path, at(THREE_META, *new), "new")
    problems = static_problems(running, changed, [r for r in map(parse_release, sources) if r])
    assert len(problems) == len(expected), problems
    for problem, text in zip(problems, expected, strict=True):
        assert f"{problem.path}: {problem.message}".startswith(text), problem
