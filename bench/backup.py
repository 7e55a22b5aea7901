"""Backup of a meta holding 10,000 keys: how long, how large (the target: under 1 s).

    .venv/bin/python bench/backup.py [REPS] [KEYS]        (default 5 repetitions, 10,000 keys)

One CeresMeta stand-in (its real etcd: Debian's 3.4) is filled with KEYS keys shaped like meta's
own (`/ceresdb/v1/cluster/<id>/schema/<id>/table/<id>`, ~200-byte values), then backed up REPS
times two ways: `ceres_supervisor.operations.backups.take` in this process (what the daemon's
schedule runs: health check, the snapshot streamed through etcd's gateway, written and synced,
read back by `etcdutl snapshot status`, the manifest) and `ceres-supervisor backup` as an operator
runs it (the same plus starting Python). For scale, one `etcdutl snapshot restore` of the snapshot
(one member) is timed too. The stand-in is removed at the end, also on failure.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import common
import docker
from stats import summary

from ceres_supervisor.adapters import etcd, etcdutl
from ceres_supervisor.model.spec import DesiredState
from ceres_supervisor.operations import backups
from testkit.standins import StandIns

TARGET_S = 1.0
BATCH = 100
"""Puts per txn (etcd allows 128 operations in one)."""


async def fill(url: str, keys: int) -> None:
    value = json.dumps(
        {
            "id": 0,
            "name": "t" * 40,
            "schemaId": 1,
            "partitionInfo": None,
            "createdAt": 1733570000000,
            "options": {"ttl": "7d", "segment_duration": "2h"},
        }
    )
    async with aiohttp.ClientSession() as session:
        client = etcd.Etcd(session, [url], 30.0)
        for start in range(0, keys, BATCH):
            ops = [
                etcd.put_request(
                    f"/ceresdb/v1/cluster/1/schema/{i % 16}/table/{i}".encode(),
                    value.replace('"id": 0', f'"id": {i}').encode(),
                )
                for i in range(start, min(keys, start + BATCH))
            ]
            await client.txn([], ops)


async def take_once(spec: DesiredState, tool: str, out: Path) -> backups.Taken:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        return await backups.take(spec, session, tool, out, directory=True)


def main(reps: int, keys: int) -> None:
    run = common.Run("backup", [str(reps), str(keys)])
    client = docker.from_env()
    common.build.main(["1.2.7"])
    text, _name, state = common.cluster_text(1, 1, version="1.2.7")
    state.mkdir(parents=True, exist_ok=True)
    runner = StandIns(client, state)
    tool = etcdutl.locate(None)
    inproc: list[float] = []
    cli: list[float] = []
    taken: backups.Taken | None = None
    try:
        spec = runner.load(text)
        runner.run(spec, "meta0")
        meta = spec.meta.nodes[0]
        url = f"http://{meta.host}:{meta.client_port}"
        common.wait_for(
            lambda: json.loads(common.http_get(f"{url}/health")[1]).get("health") == "true",
            60,
            "etcd in the meta stand-in healthy",
            0.2,
        )
        started = time.monotonic()
        asyncio.run(fill(url, keys))
        print(f"{keys} keys written in {time.monotonic() - started:.1f}s", flush=True)
        out = state / "backups"
        for _rep in range(reps):
            began = time.monotonic()
            taken = asyncio.run(take_once(spec, tool, out))
            inproc.append(time.monotonic() - began)
            began = time.monotonic()
            subprocess.run(
                [str(common.SUPERVISOR), "backup", "-c", str(state / "cluster.toml"), "-o", f"{out}/"],
                check=True,
                capture_output=True,
            )
            cli.append(time.monotonic() - began)
        assert taken is not None
        with tempfile.TemporaryDirectory(prefix="ceres-bench-restore-") as scratch:
            member = etcdutl.Member(
                "meta0",
                f"meta0=http://{meta.host}:{meta.peer_port}",
                "ceresmeta-cluster",
                f"http://{meta.host}:{meta.peer_port}",
                Path(scratch) / "etcd",
                Path(scratch) / "wal",
            )
            began = time.monotonic()
            asyncio.run(etcdutl.restore(tool, Path(taken.path), member))
            restore_s = time.monotonic() - began
    finally:
        runner.cleanup()
        shutil.rmtree(state, ignore_errors=True)

    m = taken.manifest
    take_s, cli_s = summary(inproc), summary(cli)
    rows = [
        ["keys in the snapshot (etcdutl snapshot status)", f"{m.total_keys}"],
        ["snapshot size", f"{m.size / 1024 / 1024:.2f} MiB ({m.size} bytes)"],
        [
            "backup in the daemon (`operations.backups.take`), median / max",
            f"{common.ms(take_s['median'] * 1e3)} ms / {common.ms(take_s['max'] * 1e3)} ms",
        ],
        [
            "`ceres-supervisor backup` (a new process), median / max",
            f"{common.ms(cli_s['median'] * 1e3)} ms / {common.ms(cli_s['max'] * 1e3)} ms",
        ],
        ["`etcdutl snapshot restore` of one member (for scale)", f"{common.ms(restore_s * 1e3)} ms"],
    ]
    settings = (
        f"none (no daemon: one meta stand-in, etcd 3.4 inside; etcdutl {m.etcdutl_version}; {keys} keys)"
    )
    run.table(
        f"Backup of a meta holding {keys} keys ({reps} backups each way)",
        ["", "measured"],
        rows,
        settings,
        f"Each backup reads the whole keyspace from the member through etcd's maintenance Snapshot (JSON "
        f"gateway), checks the digest etcd sends with it, writes and fsyncs it, has etcdutl read it, and "
        f"writes the manifest (SHA-256 included). Target: under {TARGET_S:g} s.",
    )
    met = take_s["median"] < TARGET_S if keys >= 10_000 else None
    run.target(
        "backup",
        f"{common.ms(take_s['median'] * 1e3)} ms median, {common.ms(take_s['max'] * 1e3)} ms max "
        f"({m.size / 1024 / 1024:.1f} MiB, {keys} keys)",
        met,
        settings,
    )
    run.save()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5, int(sys.argv[2]) if len(sys.argv) > 2 else 10_000)
