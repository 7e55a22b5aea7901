"""Chaos: random crashes, pauses and frozen leases of nodes, and of the supervisor itself.

CI runs a short form (CERES_CHAOS_SECONDS, default 80 s of chaos, under 3 minutes with recovery); `make chaos` runs it long.
A monitor thread checks, throughout and with its own eyes (Docker, etcd, HTTP, the filesystem):
- never two containers for one node;
- no CeresDB container started while meta was not ready (judged from the monitor's own readiness
  timeline, allowing the time a decision takes: meta must have been ready within the second before);
- no data directory removed;
and after the chaos stops the cluster is healthy within 2 minutes.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from ..helpers import http_json
from .conftest import Cluster, eventually

CHAOS_S = float(os.environ.get("CERES_CHAOS_SECONDS", "80"))
RECOVERY_S = 120.0


class Monitor:
    """Watches the cluster independently of the supervisor and records invariant violations."""

    def __init__(self, cluster: Cluster, spec_text: str) -> None:
        self.cluster = cluster
        self.client = docker.from_env()
        self.violations: list[str] = []
        self.meta_ready_at: list[float] = []
        self.stop = threading.Event()
        meta = spec_text.split("[[meta.nodes]]", 1)[1]
        self.meta_client = int(meta.split("client_port = ", 1)[1].split("\n", 1)[0])
        self.meta_http = int(meta.split("http_port = ", 1)[1].split("\n", 1)[0])
        self.data_dirs: set[Path] = set()
        self.threads = [threading.Thread(target=self._watch_state, daemon=True),
                        threading.Thread(target=self._watch_starts, daemon=True)]

    def meta_ready(self) -> bool:
        try:
            code, body = http_json(f"http://127.0.0.1:{self.meta_client}/health", timeout_s=0.3)
            if code != 200 or not isinstance(body, dict) or body.get("health") != "true":
                return False
            code, body = http_json(f"http://127.0.0.1:{self.meta_http}/api/v1/clusters", timeout_s=0.3)
        except OSError:
            return False
        return code == 200 and any(c.get("Name") == self.cluster.name for c in body.get("data") or [])  # type: ignore[union-attr]

    def _watch_state(self) -> None:
        while not self.stop.is_set():
            if self.meta_ready():
                self.meta_ready_at.append(time.time())
            containers = self.client.containers.list(
                all=True, filters={"label": f"io.ceres-supervisor.cluster={self.cluster.name}"})
            nodes = [c.labels.get("io.ceres-supervisor.node") for c in containers]
            duplicates = {n for n in nodes if nodes.count(n) > 1}
            if duplicates:
                self.violations.append(f"two containers for {sorted(duplicates)}")
            data = self.cluster.root / "state" / "data"
            if data.exists():
                present = {p for p in data.iterdir() if p.is_dir()}
                missing = self.data_dirs - present
                if missing:
                    self.violations.append(f"data directories removed: {sorted(map(str, missing))}")
                self.data_dirs |= present
            time.sleep(0.1)

    def _watch_starts(self) -> None:
        since = time.time()
        for event in self.client.events(decode=True, since=since, filters={
                "type": "container", "event": "start", "label": f"io.ceres-supervisor.cluster={self.cluster.name}"}):
            if self.stop.is_set():
                return
            attributes = (event.get("Actor") or {}).get("Attributes") or {}
            if attributes.get("io.ceres-supervisor.role") != "ceresdb":
                continue
            at = int(event.get("timeNano", 0)) / 1e9
            # The supervisor decides on what it saw a moment ago: meta ready within the last second.
            if not any(at - 1.0 <= t <= at + 0.2 for t in self.meta_ready_at[-200:]):
                self.violations.append(f"{attributes.get('io.ceres-supervisor.node')} started at {at:.2f} "
                                       "while meta was not ready")

    def __enter__(self) -> Monitor:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.client.close()


def _spawn(cluster: Cluster, log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "ceres_supervisor", "run", "-c", str(cluster.path)],
                                stdout=handle, stderr=handle)
    finally:
        handle.close()


@pytest.mark.timeout(CHAOS_S + RECOVERY_S + 180)
async def test_chaos(make_cluster: Callable[..., Cluster], docker_client: docker.DockerClient) -> None:
    cluster = make_cluster(meta=1, db=2, supervisor={"backoff_initial": "500ms", "backoff_max": "4s",
                                                      "crashloop_failures": 1000, "lease_grace": "5s"})
    cluster.write()
    log = cluster.root / "supervisor.log"
    url = "http://" + cluster.text.split('listen = "', 1)[1].split('"', 1)[0]
    rng = random.Random(int(os.environ.get("CERES_CHAOS_SEED", str(int(time.time())))))
    process = _spawn(cluster, log)
    actions: list[str] = []
    try:
        await eventually(lambda: http_json(f"{url}/readyz")[0] == 200, 120, "cluster healthy before the chaos")
        with Monitor(cluster, cluster.text) as monitor:
            deadline = time.monotonic() + CHAOS_S
            while time.monotonic() < deadline:
                await _one_fault(rng, cluster, docker_client, process, actions)
                if process.poll() is not None and rng.random() < 0.7:
                    process = _spawn(cluster, log)
                    actions.append("supervisor started")
                await _pause(rng.uniform(1.0, 3.0))
            if process.poll() is not None:
                process = _spawn(cluster, log)
                actions.append("supervisor started")
            try:
                await eventually(lambda: http_json(f"{url}/readyz")[0] == 200, RECOVERY_S,
                                 "the cluster healthy after the chaos", interval_s=0.5)
            except AssertionError as err:
                raise AssertionError(f"{err}\nactions: {actions[-15:]}\nstatus: {_status(url)}\nlog: "
                                     f"{log.read_text()[-3000:]}") from None
            assert not monitor.violations, (monitor.violations, actions)
            assert monitor.meta_ready_at, "the monitor never saw meta ready"
        print(f"chaos: {len(actions)} faults over {CHAOS_S:.0f} s: "
              f"{ {kind: sum(a.startswith(kind) for a in actions) for kind in ('kill', 'pause', 'freeze', 'supervisor')} }")
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(30)


async def _pause(seconds: float) -> None:
    await asyncio.sleep(seconds)  # the chaos schedule itself, not a wait for a condition


def _status(url: str) -> object:
    try:
        return http_json(f"{url}/v1/status")[1]
    except OSError as err:
        return str(err)


async def _one_fault(rng: random.Random, cluster: Cluster, client: docker.DockerClient,
                     process: subprocess.Popen[bytes], actions: list[str]) -> None:
    containers = [c for c in client.containers.list(filters={"label": f"io.ceres-supervisor.cluster={cluster.name}"})]
    kind = rng.choices(["kill", "pause", "freeze", "supervisor"], weights=[4, 2, 2, 2])[0]
    if kind == "supervisor":
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            actions.append("supervisor killed")
        return
    if not containers:
        return
    target = rng.choice(containers)
    node = target.labels.get("io.ceres-supervisor.node", "?")
    if target.status == "paused":
        return
    try:
        if kind == "kill":
            target.reload()
            os.kill(target.attrs["State"]["Pid"], signal.SIGKILL)
        elif kind == "pause":
            target.pause()
        elif kind == "freeze" and target.labels.get("io.ceres-supervisor.role") == "ceresdb":
            target.exec_run(["ceres-emulator-fault", "freeze-lease"])
        else:
            return
    except (docker.errors.APIError, ProcessLookupError, KeyError):
        return  # it died or changed under us: that is the chaos too
    actions.append(f"{kind} {node}")
