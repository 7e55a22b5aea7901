"""The commands that ask Docker (plan, down, restore) through `commands.main(argv)`, against the
in-process Docker Engine of tests/unit/fakedocker.py served from a thread (the commands run their
own event loops), and the real etcd member for what meta's etcd holds."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from ceres_supervisor.cli import commands
from ceres_supervisor.desired import loading
from ceres_supervisor.desired.containers import ContainerSpec

from .conftest import BASE, free_port
from .fakedocker import FakeDocker
from .scenes import build

LOGGED: list[dict[str, Any]] = []


def run(*argv: str) -> tuple[int, str, str]:
    """Exit code, stdout, stderr without the command's JSON log lines (kept in LOGGED)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = commands.main(list(argv))
    LOGGED.clear()
    said = []
    for line in err.getvalue().splitlines(keepends=True):
        if line.startswith('{"'):
            LOGGED.append(json.loads(line))
        else:
            said.append(line)
    return code, out.getvalue(), "".join(said)


class Docker:
    """The fake Docker Engine on a loop of its own thread."""

    def __init__(self, path: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.fake = FakeDocker(path)
        self.url = f"unix://{path}"
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.fake.start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def do(self, fn: Callable[[FakeDocker], Any]) -> Any:
        async def call() -> Any:
            result = fn(self.fake)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.fake.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def docker(tmp_path: Path) -> Iterator[Docker]:
    one = Docker(str(tmp_path / "docker.sock"))
    yield one
    one.close()


def a_file(tmp_path: Path, text: str = BASE) -> Path:
    path = tmp_path / "cluster.toml"
    text = text.replace('state_dir = "/var/lib/ceres-supervisor"', f'state_dir = "{tmp_path}/state"')
    path.write_text(
        text.replace("[cluster]\n", f'[supervisor]\nlisten = "unix:{tmp_path}/api.sock"\n\n[cluster]\n', 1)
    )
    return path


def add_container(fake: FakeDocker, spec: ContainerSpec, labels: dict[str, str]) -> str:
    return fake.add(spec.name, spec.image, labels)


def add_running(docker: Docker, path: Path, *names: str, spec_hash: str | None = None) -> dict[str, str]:
    desired = build(path.parent / "built", path.read_text())
    ids = {}
    for name in names:
        node = desired.node(name)
        assert node is not None
        labels = dict(node.container.labels)
        if spec_hash is not None:
            labels["io.ceres-supervisor.spec-hash"] = spec_hash
        ids[name] = docker.do(partial(add_container, spec=node.container, labels=labels))
    return ids


def test_plan_shows_what_run_would_do_and_why(docker: Docker, tmp_path: Path) -> None:
    path = a_file(tmp_path)
    add_running(docker, path, "meta0")
    orphan = build(tmp_path / "o", BASE).node("db1")
    assert orphan is not None
    docker.do(
        lambda fake: fake.add(
            "ceres-defaultCluster-db9", "img", {**orphan.container.labels, "io.ceres-supervisor.node": "db9"}
        )
    )
    code, out, err = run("plan", "-c", str(path), "--docker-url", docker.url)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("cluster defaultCluster (ceresdb 1.2.2), spec ")
    assert lines[1].split() == ["NODE", "ROLE", "STATE", "ACTION", "WHY"]
    rows = {line.split()[0]: line for line in lines[2:5]}
    assert "meta0" in rows and rows["db0"].split()[1:3] == ["ceresdb", "blocked"]
    assert "remove: container ceres-defaultCluster-db9 (node 'db9' is not in the file; data kept)" in out
    assert "CeresDB nodes start once meta is ready (the next cycles of `run`)." in out
    assert not [c for c in docker.fake.calls if c.startswith(("POST", "DELETE"))]  # nothing done


def test_down_stops_and_removes_this_machine_s_containers_and_keeps_the_data(
    docker: Docker, tmp_path: Path
) -> None:
    path = a_file(tmp_path)
    ids = add_running(docker, path, "meta0", "db0", "db1")
    code, out, err = run("down", "-c", str(path), "--docker-url", docker.url)
    assert (code, err) == (0, "")
    assert out.rstrip().endswith(
        f"cluster defaultCluster: containers stopped and removed; data kept under {tmp_path}/state/data"
    )
    assert docker.fake.containers == {}
    stopped = [e["node"] for e in LOGGED if e["event"] == "container_stopped"]
    assert sorted(stopped[:2]) == ["db0", "db1"] and stopped[2:] == ["meta0"]  # CeresDB first, then meta
    assert [c for c in docker.fake.calls if c.endswith("/stop")][
        -1
    ] == f"POST /containers/{ids['meta0']}/stop"


def test_down_reports_what_it_could_not_stop_and_is_1(docker: Docker, tmp_path: Path) -> None:
    path = a_file(tmp_path)
    ids = add_running(docker, path, "meta0", "db0")
    docker.do(lambda fake: fake.fail.update({f"DELETE /containers/{ids['db0']}": (500, "device busy")}))
    code, _out, err = run("down", "-c", str(path), "--docker-url", docker.url)
    assert code == 1 and err == "error: db0: remove container: device busy\n"


# --- restore ------------------------------------------------------------------------------------------


@pytest.fixture
def backup(etcd_member: str, tmp_path: Path) -> tuple[Path, Path]:
    """A file whose meta member is the real etcd member, and a backup of it."""
    text = f"""
[cluster]
state_dir = "{tmp_path}/state"

[[meta.nodes]]
name = "meta0"
host = "127.0.0.1"
client_port = {etcd_member.rsplit(":", 1)[1]}
peer_port = {free_port()}
http_port = {free_port()}

[[ceresdb.nodes]]
name = "db0"
host = "127.0.0.1"
"""
    path = tmp_path / "live.toml"
    path.write_text(text)
    code, out, err = run("backup", "-c", str(path), "-o", f"{tmp_path}/backups/")
    assert code == 0, err
    return path, Path(out.split(":", 1)[0])


def test_restore_refuses_while_a_container_of_the_cluster_runs(
    docker: Docker, backup: tuple[Path, Path]
) -> None:
    path, snapshot = backup
    add_running(docker, path, "db0")
    code, _out, err = run("restore", "-c", str(path), "--from", str(snapshot), "--docker-url", docker.url)
    assert code == 6
    assert err == (
        f"error: containers of cluster defaultCluster run on this machine (db0): stop them first with "
        f"`ceres-supervisor down -c {path}`\n"
    )


def test_restore_rebuilds_this_machine_s_meta_members_and_says_what_next(
    docker: Docker, backup: tuple[Path, Path]
) -> None:
    path, snapshot = backup
    data = Path(loading.load(path).spec.cluster.state_dir) / "data" / "meta0"
    data.mkdir(parents=True)
    code, out, err = run("restore", "-c", str(path), "--from", str(snapshot), "--docker-url", docker.url)
    assert (code, err) == (0, ""), err
    assert out.startswith(f"restored meta0 in {data} (previous data moved to {data}.before-restore-")
    assert "CeresMeta's metadata is now as it was at " in out and "The previous data is kept: remove " in out


def test_restore_on_a_machine_without_meta_members_has_nothing_to_do(
    docker: Docker, backup: tuple[Path, Path]
) -> None:
    path, snapshot = backup
    code, out, _err = run(
        "restore", "-c", str(path), "--from", str(snapshot), "--docker-url", docker.url, "--host", "127.0.0.9"
    )
    assert (
        code == 0
        and out == "no meta member of cluster defaultCluster runs on this machine: nothing to restore here\n"
    )
