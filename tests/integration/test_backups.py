"""Backups and restores of CeresMeta's etcd, and data directories that know whose they are, on the
stand-ins (their meta runs a real etcd, Debian's 3.4; the backups go through etcdutl 3.5.1).

One cluster of 3 meta + 2 CeresDB nodes carries every check, in the order an operator meets them:
scheduled backups while it runs (one agent holds the store's `backup` key), a backup by hand, the
refusals (a daemon running, a corrupt snapshot, another cluster's manifest, containers running),
then `down`, a restore of every member into fresh directories (each "machine", a loopback address
as `--host` makes one, restores its own member from the same backup), and a start in which two
CeresDB nodes find each other's data directory (blocked, both names said) until they are put
back: then the cluster is healthy, every key of the snapshot is back, and each CeresDB node
started once.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import aiohttp
import docker
import pytest

from ceres_supervisor.adapters import etcd
from ceres_supervisor.cluster.coordinator import Coordinator
from ceres_supervisor.cluster.view import Identity
from ceres_supervisor.desired import identity
from ceres_supervisor.model.backups import Manifest
from testkit.dockerevents import DockerEvents
from testkit.helpers import http_json

from .conftest import Cluster, eventually

KEYS = 200


def run(*args: str) -> tuple[int, str, str]:
    """The CLI in a process of its own, as an operator runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "ceres_supervisor", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


async def arun(*args: str) -> tuple[int, str, str]:
    return await asyncio.to_thread(run, *args)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def keyspace(client: etcd.Etcd, revision: int | None = None) -> dict[bytes, bytes]:
    """Every key of the store and its value (at `revision`, when given)."""
    body = {"key": b64(b"\0"), "range_end": b64(b"\0")}
    if revision is not None:
        body["revision"] = str(revision)
    answer = await client.call("/v3/kv/range", body)
    return {
        base64.b64decode(kv["key"]): base64.b64decode(kv.get("value") or "") for kv in answer.get("kvs") or []
    }


async def put_keys(client: etcd.Etcd, prefix: bytes, count: int) -> None:
    for start in range(0, count, 100):
        ops = [
            etcd.put_request(prefix + b"%05d" % i, b"value-%d" % i)
            for i in range(start, min(count, start + 100))
        ]
        await client.txn([], ops)


def manifest_of(snapshot: Path) -> Manifest:
    return Manifest.decode(Path(f"{snapshot}.manifest.json").read_bytes())


def copy_backup(snapshot: Path, name: str) -> tuple[Path, Path]:
    target = snapshot.with_name(name)
    target.write_bytes(snapshot.read_bytes())
    manifest = Path(f"{target}.manifest.json")
    manifest.write_bytes(Path(f"{snapshot}.manifest.json").read_bytes())
    return target, manifest


async def check_claims(client_url: str) -> None:
    """Two agents, one claim: the first holds it, the second is told who; it moves on when the
    holder's lease goes (here: revoked at its clean exit)."""
    cluster = f"claims{uuid.uuid4().hex[:6]}"
    async with aiohttp.ClientSession() as session:
        agents = [
            Coordinator(cluster, Identity(host, "test", "127.0.0.1:1"), 5, lambda: None)
            for host in ("127.0.9.1", "127.0.9.2")
        ]

        async def cycling() -> None:  # the daemons' loops, which the leases are tied to
            while True:
                for a in agents:
                    a.progress(None)
                await asyncio.sleep(0.2)

        tasks = [asyncio.create_task(a.run(etcd.Etcd(session, [client_url], 2.0))) for a in agents]
        tasks.append(asyncio.create_task(cycling()))
        try:
            await eventually(lambda: all(a.available for a in agents), 30, "both agents connected")
            first, second = agents
            assert await first.claim("backup", {"dir": "/b"}) is None
            assert await first.claim("backup", {"dir": "/b"}) is None  # already held: still None
            assert await second.claim("backup", {"dir": "/b"}) == "127.0.9.1"
            await first.close()
            assert await second.claim("backup", {"dir": "/b"}) is None
            with pytest.raises(etcd.EtcdUnavailable):
                await first.claim("backup", {})  # its session is closed: it claims nothing
        finally:
            for a in agents:
                await a.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_backup_and_restore_of_a_three_member_meta(
    make_cluster: Callable[..., Cluster], docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    scheduled = tmp_path / "scheduled"
    cluster = make_cluster(
        meta=3,
        db=2,
        version="1.2.7",
        extra=f'\n[backup]\ndir = "{scheduled}"\ninterval = "2s"\nkeep = 2\n',
    )
    supervisor = await cluster.start()
    config = str(cluster.path)
    data = cluster.root / "state" / "data"
    await cluster.healthy(90)
    meta = cluster.spec.meta.nodes
    urls = [f"http://{m.host}:{m.client_port}" for m in meta]

    async with aiohttp.ClientSession() as session:
        client = etcd.Etcd(session, urls, 10.0)
        await put_keys(client, b"/backup-test/", KEYS)

        # Scheduled: taken by this agent (the store's key names it), shown in status and /metrics,
        # the newest two kept.
        await eventually(
            lambda: len(list(scheduled.glob("*.manifest.json"))) == 2 and supervisor.backups.status.pruned,
            30,
            "three scheduled backups, the oldest pruned",
        )
        _code, status = await asyncio.to_thread(http_json, cluster.api_url + "/v1/status")
        assert isinstance(status, dict)
        backup = status["backup"]
        assert backup["enabled"] and backup["holder"] == supervisor.agent, backup
        assert backup["last_success"]["revision"] > 0 and backup["last_error"] is None, backup
        claimed = await client.range(f"/ceres-supervisor/{cluster.name}/backup".encode())
        assert json.loads(claimed.kvs[0].value)["host"] == supervisor.agent and claimed.kvs[0].lease
        metrics, _ = supervisor.metrics.exposition(None)
        line = f'ceres_supervisor_last_backup_success_timestamp_seconds{{cluster="{cluster.name}",host="{supervisor.agent}"}}'
        assert line in metrics.decode()
        await check_claims(urls[0])

        # By hand: written, verified, with its manifest.
        out = tmp_path / "manual"
        out.mkdir()
        code, said, err = await arun("backup", "-c", config, "-o", str(out))
        assert code == 0, err
        (snapshot,) = out.glob("*.db")
        manifest = manifest_of(snapshot)
        assert str(snapshot) in said and manifest.members == ("meta0", "meta1", "meta2")
        assert (
            manifest.cluster == cluster.name and manifest.flavor == "ceresdb" and manifest.version == "1.2.7"
        )
        expected = await keyspace(client, manifest.revision)
        assert sum(k.startswith(b"/backup-test/") for k in expected) == KEYS
        assert any(k.startswith(b"/ceresdb/") for k in expected), sorted(expected)[:20]
        code, said, err = await arun("backup", "-c", config, "-o", str(tmp_path / "as-json.db"), "--json")
        taken = json.loads(said)
        assert code == 0 and taken["path"] == str(tmp_path / "as-json.db"), err
        assert taken["manifest"]["cluster"] == cluster.name and len(taken["manifest"]["sha256"]) == 64
        await client.put(b"/backup-test/after-the-snapshot", b"x")

    # Refused while the daemon runs, whatever the backup.
    code, _said, err = await arun("restore", "-c", config, "--from", str(snapshot))
    assert code == 6 and "daemon answers" in err, err
    # A corrupt snapshot, and another cluster's backup: refused before anything else (exit 7).
    corrupt, _ = copy_backup(snapshot, "corrupt.db")
    raw = bytearray(corrupt.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(raw))
    code, _said, err = await arun("restore", "-c", config, "--from", str(corrupt))
    assert code == 7 and "SHA-256" in err and "corrupt" in err, err
    _other, other_manifest = copy_backup(snapshot, "other.db")
    doc = json.loads(other_manifest.read_text())
    other_manifest.write_text(json.dumps({**doc, "cluster": "anotherCluster"}))
    code, _said, err = await arun("restore", "-c", config, "--from", str(other_manifest))
    assert code == 7 and "cluster 'anotherCluster'" in err and f"runs cluster '{cluster.name}'" in err, err

    # The daemon stopped (on_exit = leave): its containers still run, so it is still refused.
    await cluster.stop()
    code, _said, err = await arun("restore", "-c", config, "--from", str(snapshot))
    assert code == 6 and "run on this machine" in err, err
    assert not list(data.glob("*.before-restore-*"))
    code, _said, err = await arun("down", "-c", config)
    assert code == 0, err

    # Each "machine" (loopback address, as `run --host`) restores its own member from the same backup.
    for m in meta:
        if m is meta[-1]:  # the last one as a script would, with --json
            code, said, err = await arun(
                "restore", "-c", config, "--from", str(snapshot), "--host", m.host, "--json"
            )
            done = json.loads(said)
            assert code == 0 and [(r["node"], r["data_dir"]) for r in done["restored"]] == [
                (m.name, str(data / m.name))
            ]
            assert done["snapshot"] == str(snapshot) and {r["node"] for r in done["remote"]} == {
                o.name for o in meta
            } - {m.name}
        else:
            code, said, err = await arun("restore", "-c", config, "--from", str(snapshot), "--host", m.host)
            assert code == 0, err
            assert f"restored {m.name} in {data / m.name}" in said and said.count("restored meta") == 1, said
            others = [f"{o.name} ({o.host})" for o in meta if o is not m]
            assert f"{', '.join(others)} run on other machines" in said, said
            assert "Tables created after" in said and "each CeresDB node once" in said, said
        (aside,) = data.glob(f"{m.name}.before-restore-*")  # the old data, moved aside, whole
        assert (aside / "etcd" / "member" / "snap" / "db").is_file() and (aside / "wal").is_dir()
        marker = identity.read(data / m.name)
        assert marker is not None and marker.node == m.name and marker.restored_from == snapshot.name

    # db0 and db1 find each other's directory: blocked, both names said, never started.
    os.rename(data / "db0", data / "swap")
    os.rename(data / "db1", data / "db0")
    os.rename(data / "swap", data / "db1")
    with DockerEvents(docker_client, cluster.name) as events:
        await cluster.start()
        for node, other_node in (("db0", "db1"), ("db1", "db0")):
            await eventually(functools.partial(cluster.in_state, node, "blocked"), 60, f"{node} blocked")
            view = cluster.view(node)
            assert view is not None and view.reason is not None
            assert f"node {other_node} of cluster {cluster.name}" in view.reason, view.reason
            assert f"this node, {node} of cluster {cluster.name}" in view.reason, view.reason
        await eventually(lambda: cluster.state("meta0") == "healthy", 60, "meta back")
        assert events.of("db0", ("start",)) == [] and events.of("db1", ("start",)) == []
        # The way out: put the directories back; the next cycles start them.
        os.rename(data / "db0", data / "swap")
        os.rename(data / "db1", data / "db0")
        os.rename(data / "swap", data / "db1")
        await cluster.healthy(90)
        starts = {n: len(events.of(n, ("start",))) for n in ("db0", "db1")}
        assert starts == {"db0": 1, "db1": 1}, starts

    async with aiohttp.ClientSession() as session:
        client = etcd.Etcd(session, urls, 10.0)
        assert await keyspace(client, manifest.revision) == expected  # every key of the snapshot, as it was
        now = await keyspace(client)
        assert sum(k.startswith(b"/backup-test/0") for k in now) == KEYS
        assert b"/backup-test/after-the-snapshot" not in now
