"""Backups and restores, their pure parts: the manifest, whether a backup fits the file, which old
backups go, the schedule's timing, the `[backup]` section's validation, the snapshot stream's
framing, and each restored member's identity as the rendered config gives it. No etcd, no Docker."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ceres_supervisor.adapters import etcd, snapshots
from ceres_supervisor.cli import commands
from ceres_supervisor.decisions import backups as decide
from ceres_supervisor.desired import containers, loading
from ceres_supervisor.model import backups
from ceres_supervisor.model.backups import Manifest
from ceres_supervisor.operations import backups as ops
from ceres_supervisor.operations import restores

from .conftest import BASE
from .test_planning import META3

MANIFEST = Manifest(
    cluster="defaultCluster",
    flavor="ceresdb",
    version="1.2.2",
    revision=42,
    members=("meta0",),
    taken_at="2026-12-07T10:00:00.000Z",
    supervisor_version="0.3.0",
    snapshot="defaultCluster-20261207T100000.000Z.db",
    size=20512,
    sha256="ab" * 32,
    source="meta0 http://127.0.0.1:2379",
    total_keys=24,
    etcdutl_version="3.5.1",
    duration_s=0.05,
)


def spec(text: str = BASE) -> Any:
    return loading.validate(loading.parse(text, "c.toml"), "c.toml").spec


# --- the manifest ------------------------------------------------------------------------------------


def test_the_manifest_reads_back_what_was_written() -> None:
    raw = MANIFEST.encode()
    doc = json.loads(raw)
    assert doc["kind"] == backups.KIND and doc["format"] == backups.FORMAT
    assert Manifest.decode(raw) == MANIFEST


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"kind": "something-else"}, "not a ceres-supervisor backup manifest"),
        ({"format": 2}, "not a ceres-supervisor backup manifest"),
        ({"revision": "42"}, "missing or mistyped: revision"),
        ({"members": "meta0"}, "missing or mistyped: members"),
        ({"sha256": None, "size": True}, "missing or mistyped: sha256, size"),
    ],
)
def test_a_manifest_that_is_not_one_is_refused_naming_the_fields(change: dict[str, object], why: str) -> None:
    doc = {**json.loads(MANIFEST.encode()), **change}
    with pytest.raises(ValueError, match=why):
        Manifest.decode(json.dumps(doc).encode())


def test_names_sort_by_time_and_pair_snapshot_and_manifest() -> None:
    early = backups.snapshot_name("c", datetime(2026, 12, 7, 9, 59, 59, 999000, tzinfo=UTC))
    late = backups.snapshot_name("c", datetime(2026, 12, 7, 10, 0, 0, 1000, tzinfo=UTC))
    assert early == "c-20261207T095959.999Z.db" and late == "c-20261207T100000.001Z.db" and early < late
    assert backups.snapshot_path_of(backups.manifest_path_of("/b/x.db")) == "/b/x.db"
    assert backups.snapshot_path_of("/b/x.db") == "/b/x.db"


# --- does it fit the file -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "problems"),
    [
        ({}, []),
        ({"version": "1.2.7"}, []),  # another version of the flavor: allowed, and said (below)
        ({"cluster": "other"}, ["cluster 'other', the file runs cluster 'defaultCluster'"]),
        ({"flavor": "horaedb"}, ["a horaedb backup, the file runs ceresdb"]),
        (
            {"members": ("meta0", "meta1", "meta2")},
            ["meta members are meta0, meta1, meta2, the file's are meta0"],
        ),
        (
            {"cluster": "other", "members": ("m",)},
            ["cluster 'other'", "meta members are m, the file's are meta0"],
        ),
    ],
)
def test_a_backup_of_another_cluster_flavor_or_members_does_not_fit(
    change: dict[str, object], problems: list[str]
) -> None:
    found = decide.mismatches(replace(MANIFEST, **change), spec())  # type: ignore[arg-type]
    assert len(found) == len(problems)
    for text, expected in zip(found, problems, strict=True):
        assert expected in text


def test_another_version_is_said_not_refused() -> None:
    assert decide.version_note(MANIFEST, spec()) is None
    note = decide.version_note(replace(MANIFEST, version="1.2.7"), spec())
    assert note is not None and "1.2.7" in note and "1.2.2" in note


@pytest.mark.parametrize(
    ("sha", "size", "why"),
    [
        ("ab" * 32, 20512, None),
        ("cd" * 32, 20512, "corrupt"),
        ("ab" * 32, 20511, "20511 bytes, its manifest says 20512"),
    ],
)
def test_the_checksum_and_size_must_match_the_manifest(sha: str, size: int, why: str | None) -> None:
    found = decide.checksum_problem(MANIFEST, sha, size)
    assert (found is None) == (why is None)
    if why is not None:
        assert found is not None and why in found


# --- what is kept, and when the next one is due ----------------------------------------------------------


def test_only_this_clusters_backups_beyond_keep_are_pruned_oldest_first() -> None:
    found = [(f"/b/{i}.db", replace(MANIFEST, taken_at=f"2026-12-07T10:00:0{i}.000Z")) for i in range(5)] + [
        ("/b/other.db", replace(MANIFEST, cluster="other", taken_at="2026-01-01T00:00:00.000Z"))
    ]
    assert decide.to_prune(found, "defaultCluster", 2) == ["/b/0.db", "/b/1.db", "/b/2.db"]
    assert decide.to_prune(found, "defaultCluster", 5) == []
    assert decide.to_prune(found, "other", 1) == []


def test_prune_deletes_the_manifest_and_its_snapshot_and_nothing_else(tmp_path: Path) -> None:
    for i in range(3):
        snapshot = tmp_path / f"defaultCluster-{i}.db"
        snapshot.write_bytes(b"x")
        manifest = replace(MANIFEST, taken_at=f"2026-12-07T10:00:0{i}.000Z", snapshot=snapshot.name)
        Path(backups.manifest_path_of(str(snapshot))).write_bytes(manifest.encode())
    (tmp_path / "unfinished.db").write_bytes(b"x")  # no manifest: not a backup, never touched
    (tmp_path / "broken.db.manifest.json").write_bytes(b"{")
    gone = ops.prune(tmp_path, "defaultCluster", 1)
    assert gone == [str(tmp_path / "defaultCluster-0.db"), str(tmp_path / "defaultCluster-1.db")]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "broken.db.manifest.json",
        "defaultCluster-2.db",
        "defaultCluster-2.db.manifest.json",
        "unfinished.db",
    ]
    newest = ops.newest(tmp_path, "defaultCluster")
    assert newest is not None and newest.path == str(tmp_path / "defaultCluster-2.db")


@pytest.mark.parametrize(
    ("last", "now", "due"),
    [(None, 1000.0, 1000.0), (900.0, 1000.0, 4500.0), (0.0, 10_000.0, 10_000.0)],
)
def test_the_next_backup_is_an_interval_after_the_last_good_one(
    last: float | None, now: float, due: float
) -> None:
    assert decide.next_due(last, 3600.0, now) == due


def test_a_failed_try_is_retried_soon_but_never_more_than_once_a_second() -> None:
    assert decide.retry_s(3600.0) == 30.0
    assert decide.retry_s(5.0) == 5.0
    assert decide.retry_s(0.2) == 1.0


# --- the [backup] section ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ('interval = "10m"', "backup.interval: scheduled backups need backup.dir"),
        ("keep = 3", "backup.keep: scheduled backups need backup.dir"),
        ('dir = "backups"', "backup.dir: must be an absolute path"),
        ('dir = "/b"\ninterval = "500ms"', "backup.interval: must be at least 1s"),
        ('dir = "/b"\ninterval = 60', 'backup.interval: must be a duration string with a unit, like "60s"'),
        ('dir = "/b"\nkeep = 0', "backup.keep: Input should be greater than or equal to 1"),
        ('etcdutl = "etcdutl"', "backup.etcdutl: must be an absolute path"),
        ('dir = "/b"\nkept = 3', "backup.kept: unknown key"),
    ],
)
def test_an_invalid_backup_section_is_refused_naming_its_key(
    write: Any, capsys: pytest.CaptureFixture[str], table: str, expected: str
) -> None:
    path = write(BASE + "\n[backup]\n" + table + "\n")
    assert commands.main(["validate", "-c", str(path)]) == 2
    assert expected in capsys.readouterr().err


def test_backups_are_off_by_default_and_on_with_a_dir() -> None:
    assert spec().backup.dir is None
    on = spec(BASE + '\n[backup]\ndir = "/var/backups/ceres"\n').backup
    assert (on.dir, on.interval, on.keep, on.etcdutl) == ("/var/backups/ceres", 3600.0, 24, None)


# --- the snapshot stream (etcd's JSON gateway) ------------------------------------------------------------


def message(blob: bytes, remaining: int | None) -> bytes:
    result: dict[str, object] = {"blob": base64.b64encode(blob).decode()}
    if remaining:
        result["remaining_bytes"] = str(remaining)  # int64 as a string; 0 is left out, as the gateway does
    return json.dumps({"result": result}).encode()


def follow(db: bytes, digest: bytes | None, cut: int = 0) -> tuple[bytes, str | None]:
    chunks = [db[i : i + 7] for i in range(0, len(db), 7)]
    follower, out = snapshots._Digest(), b""
    for i, chunk in enumerate(chunks[: len(chunks) - cut]):
        out += follower.add(*snapshots._decode(message(chunk, len(db) - 7 * i - len(chunk))))
    if digest is not None and not cut:
        out += follower.add(*snapshots._decode(message(digest, None)))
    return out, follower.problem()


def test_the_stream_is_the_database_then_its_digest() -> None:
    db = bytes(range(256)) * 3
    out, problem = follow(db, hashlib.sha256(db).digest())
    assert problem is None and out == db + hashlib.sha256(db).digest()


@pytest.mark.parametrize(
    ("digest", "cut", "why"),
    [
        (None, 0, "no digest"),
        (hashlib.sha256(b"another").digest(), 0, "does not match the digest"),
        (b"", 2, "no digest"),
    ],
)
def test_a_stream_cut_short_or_damaged_is_refused(digest: bytes | None, cut: int, why: str) -> None:
    _out, problem = follow(bytes(range(100)), digest, cut)
    assert problem is not None and why in problem


def test_an_error_in_the_stream_is_the_members_own_words() -> None:
    with pytest.raises(etcd.EtcdUnavailable, match="etcdserver: no leader"):
        snapshots._decode(json.dumps({"error": {"message": "etcdserver: no leader"}}).encode())


# --- each member restored as its rendered config says ----------------------------------------------------


def test_each_local_member_is_restored_under_its_rendered_identity(tmp_path: Path) -> None:
    text = META3.replace(
        '[cluster]\nstate_dir = "/var/lib/ceres-supervisor"', f'[cluster]\nstate_dir = "{tmp_path}"'
    )
    text = text.replace('name = "meta2"\nhost = "127.0.0.1"', 'name = "meta2"\nhost = "10.0.0.3"')
    text = text.replace(
        "[[meta.nodes]]", '[meta]\nconfig = { initial-cluster-token = "tok-7" }\n\n[[meta.nodes]]', 1
    )
    desired = containers.build(spec(text), lambda _ref: "", is_local=lambda host: host.startswith("127."))
    planned = restores.members(desired, "restoring-x")
    assert [node.name for node, _data, _member in planned] == ["meta0", "meta1"]
    _node, data, member = planned[1]
    assert data == tmp_path / "data" / "meta1"
    assert member.name == "meta1"
    assert member.token == "tok-7"
    assert member.peer_urls == "http://127.0.0.1:12380"
    assert member.initial_cluster == (
        "meta0=http://127.0.0.1:2380,meta1=http://127.0.0.1:12380,meta2=http://10.0.0.3:22380"
    )
    assert member.data_dir == tmp_path / "data" / ".meta1.restoring-x" / "etcd"
    assert member.wal_dir == tmp_path / "data" / ".meta1.restoring-x" / "wal"
    assert [n.name for n in restores.remote_members(desired)] == ["meta2"]


@pytest.mark.parametrize(
    ("flavor", "token"), [("ceresdb", "ceresmeta-cluster"), ("horaedb", "horaemeta-cluster")]
)
def test_without_a_token_in_the_file_the_servers_default_is_used(
    tmp_path: Path, flavor: str, token: str
) -> None:
    text = BASE.replace(
        '[cluster]\nstate_dir = "/var/lib/ceres-supervisor"', f'[cluster]\nstate_dir = "{tmp_path}"'
    )
    if flavor == "horaedb":
        text = text.replace("[cluster]\n", '[cluster]\nflavor = "horaedb"\nversion = "2.0.0"\n', 1)
        text = text.replace("mysql_port = 3308", "mysql_port = 3308\npostgresql_port = 5434")
    desired = containers.build(spec(text), lambda _ref: "", is_local=lambda _host: True)
    ((_node, _data, member),) = restores.members(desired, "r")
    assert member.token == token


# --- the schedule's decisions before any backup is taken ------------------------------------------------


class Store:
    """Speaks the `Claims` protocol as the store does for this test: `holder` holds the key."""

    def __init__(self, holder: str | None) -> None:
        self.holder = holder
        self.claims = 0
        self.released = 0

    async def claim(self, name: str, doc: dict[str, Any]) -> str | None:
        assert name == "backup"
        self.claims += 1
        return self.holder

    async def unclaim(self, name: str) -> None:
        self.released += 1


def write_backup(snapshot: Path, manifest: Manifest) -> None:
    snapshot.write_bytes(b"x")
    Path(backups.manifest_path_of(str(snapshot))).write_bytes(manifest.encode())


def schedule(text: str, store: Store, meta_ready: bool = True) -> ops.Schedule:
    current = spec(text)
    return ops.Schedule(lambda: current, store, "10.0.0.1", lambda: meta_ready, lambda _h: True, lambda: None)


async def test_another_agent_holding_the_claim_takes_them_and_this_one_writes_nothing(tmp_path: Path) -> None:
    store = Store("10.0.0.2")
    plan = schedule(BASE + f'\n[backup]\ndir = "{tmp_path}"\n', store)
    wait_s = await plan._pass(None)  # type: ignore[arg-type]  # no backup is taken: no session used
    assert store.claims == 1 and wait_s == ops.RECHECK_S
    assert (plan.status.state, plan.status.holder) == ("other_agent", "10.0.0.2")
    assert plan.status.document()["holder"] == "10.0.0.2"
    assert ops.found_in(tmp_path) == []
    await plan._pass(None)  # type: ignore[arg-type]
    assert store.claims == 1  # not asked again before the next interval


async def test_nothing_is_claimed_while_meta_is_not_ready_or_backups_are_off(tmp_path: Path) -> None:
    store = Store(None)
    waiting = schedule(BASE + f'\n[backup]\ndir = "{tmp_path}"\n', store, meta_ready=False)
    await waiting._pass(None)  # type: ignore[arg-type]
    assert store.claims == 0 and (waiting.status.state, waiting.status.detail) == (
        "waiting",
        "meta is not ready",
    )
    off = schedule(BASE, store)
    await off._pass(None)  # type: ignore[arg-type]
    assert store.claims == 0 and off.status.document()["enabled"] is False and off.status.state == "off"


async def test_the_series_on_disk_sets_when_the_next_backup_is_due(tmp_path: Path) -> None:
    snapshot = tmp_path / "defaultCluster-1.db"
    taken = replace(MANIFEST, taken_at=datetime.now(UTC).isoformat().replace("+00:00", "Z"))
    write_backup(snapshot, taken)
    store = Store(None)
    plan = schedule(BASE + f'\n[backup]\ndir = "{tmp_path}"\ninterval = "1h"\n', store)
    await plan._pass(None)  # type: ignore[arg-type]
    assert store.claims == 0 and plan.status.state == "waiting"  # the last one is recent: nothing due
    assert plan.status.last_success is not None and plan.status.last_success.path == str(snapshot)
    assert plan.status.document()["last_success"]["revision"] == MANIFEST.revision
