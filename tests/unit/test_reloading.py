"""What a running daemon refuses to change on reload, each with its key path: pure, no daemon."""

from __future__ import annotations

from pathlib import Path

import pytest

from ceres_supervisor.daemon.reloading import static_problems
from ceres_supervisor.desired import loading
from ceres_supervisor.model.spec import DesiredState

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
