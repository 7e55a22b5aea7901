"""Chaos: random crashes, pauses and frozen leases of nodes, and of the supervisor itself.

CI runs a short form (CERES_CHAOS_SECONDS, default 40 s of chaos, longer until the planned faults were made,
up to half as long again; under 3 minutes with recovery); `make chaos` runs it long.
A monitor thread checks, throughout and with its own eyes (Docker, etcd, HTTP, the filesystem):
- never two containers for one node;
- no CeresDB container started while meta was not ready (judged from the monitor's own readiness
  timeline, with a generous margin for the time a decision takes and for load: meta must have been
  ready within the 3 seconds before);
- no data directory removed;
- never more CeresDB nodes down by choice at once than the budget allows (1), judged from Docker's
  own events (every stop the supervisor causes is a `kill`);
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

from testkit.dockerevents import DockerEvents
from testkit.helpers import http_json
from testkit.standins import kill_main_process

from .conftest import Cluster, eventually

CHAOS_S = float(os.environ.get("CERES_CHAOS_SECONDS", "40"))
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
        self.errors: list[str] = []
        """An exception in a monitor thread: the run proves nothing, so the test fails."""
        self.threads = [
            threading.Thread(target=self._guard(self._watch_state), daemon=True),
            threading.Thread(target=self._guard(self._watch_starts), daemon=True),
        ]

    def _guard(self, body: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                body()
            except Exception as err:  # reported by the test, never swallowed
                if not self.stop.is_set():
                    self.errors.append(f"{body.__name__}: {type(err).__name__}: {err}")

        return run

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
                all=True, filters={"label": f"io.ceres-supervisor.cluster={self.cluster.name}"}
            )
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
        for event in self.client.events(
            decode=True,
            since=since,
            filters={
                "type": "container",
                "event": "start",
                "label": f"io.ceres-supervisor.cluster={self.cluster.name}",
            },
        ):
            if self.stop.is_set():
                return
            attributes = (event.get("Actor") or {}).get("Attributes") or {}
            if attributes.get("io.ceres-supervisor.role") != "ceresdb":
                continue
            at = int(event.get("timeNano", 0)) / 1e9
            # The supervisor decides on what it saw a moment ago: meta ready within the last second.
            if not any(at - 3.0 <= t <= at + 0.5 for t in self.meta_ready_at[-500:]):
                self.violations.append(
                    f"{attributes.get('io.ceres-supervisor.node')} started at {at:.2f} "
                    "while meta was not ready"
                )

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
        return subprocess.Popen(
            [sys.executable, "-m", "ceres_supervisor", "run", "-c", str(cluster.path)],
            stdout=handle,
            stderr=handle,
        )
    finally:
        handle.close()


def _injected(actions: list[str]) -> int:
    """Faults that took effect: not the missed ones, not the idle steps, not the supervisor's own
    starts (the repair of a kill, not a fault)."""
    return sum(not a.startswith(("missed", "idle", "supervisor started")) for a in actions)


@pytest.mark.timeout(CHAOS_S * 1.5 + RECOVERY_S + 180)
async def test_chaos(make_cluster: Callable[..., Cluster], docker_client: docker.DockerClient) -> None:
    cluster = make_cluster(
        meta=1,
        db=2,
        supervisor={
            "backoff_initial": "500ms",
            "backoff_max": "4s",
            "crashloop_failures": 1000,
            "lease_grace": "5s",
        },
    )
    cluster.write()
    log = cluster.root / "supervisor.log"
    url = "http://" + cluster.text.split('listen = "', 1)[1].split('"', 1)[0]
    seed = int(os.environ.get("CERES_CHAOS_SEED", str(int(time.time()))))
    print(f"chaos: seed {seed} (CERES_CHAOS_SEED={seed} replays it)")
    rng = random.Random(seed)
    planned = int(CHAOS_S / 4.0)  # one fault every 1-3 s, plus the time each takes under load
    process = _spawn(cluster, log)
    actions: list[str] = []
    try:
        await eventually(
            lambda: http_json(f"{url}/readyz")[0] == 200, 120, "cluster healthy before the chaos"
        )
        with Monitor(cluster, cluster.text) as monitor, DockerEvents(docker_client, cluster.name) as events:
            deadline = time.monotonic() + CHAOS_S
            spawned = time.monotonic()
            # CHAOS_S of chaos, and longer (up to half as long again) until the planned faults were
            # made: a seed can leave nothing running for a while (everything paused or crashed, the
            # supervisor killed again and again), and those steps are idle.
            while time.monotonic() < deadline or (
                _injected(actions) < planned and time.monotonic() < deadline + CHAOS_S / 2
            ):
                if process.poll() is not None and rng.random() < 0.7:
                    process, spawned = _spawn(cluster, log), time.monotonic()
                    actions.append("supervisor started")
                else:
                    # A supervisor is killed again only after a few seconds up: long enough to act.
                    killable = process.poll() is None and time.monotonic() - spawned >= 5.0
                    await _one_fault(rng, cluster, docker_client, process if killable else None, actions)
                await _pause(rng.uniform(1.0, 3.0))
            if process.poll() is not None:
                process = _spawn(cluster, log)
                actions.append("supervisor started")
            try:
                await eventually(
                    lambda: http_json(f"{url}/readyz")[0] == 200,
                    RECOVERY_S,
                    "the cluster healthy after the chaos",
                    interval_s=0.5,
                )
            except AssertionError as err:
                raise AssertionError(
                    f"{err}\nactions: {actions[-15:]}\nstatus: {_status(url)}\nlog: {log.read_text()[-3000:]}"
                ) from None
            assert not monitor.errors, monitor.errors
            assert not monitor.violations, (monitor.violations, actions)
            assert monitor.meta_ready_at, "the monitor never saw meta ready"
            most, intervals = events.most_down_at_once("ceresdb")
            assert most <= 1, f"more CeresDB nodes down by choice at once than the budget: {intervals}"
        counts = {
            kind: sum(a.startswith(kind) for a in actions)
            for kind in ("kill", "pause", "freeze", "supervisor", "missed", "idle")
        }
        injected = _injected(actions)
        print(
            f"chaos: seed {seed}, {injected} faults over {CHAOS_S:.0f} s or more (planned at least {planned}): "
            f"{counts}"
        )
        print(f"chaos: {actions}")
        assert injected >= planned, f"only {injected} of {planned} faults were injected: {actions}"
        assert counts["missed"] <= injected / 4, f"too many faults missed: {actions}"
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


async def _one_fault(
    rng: random.Random,
    cluster: Cluster,
    client: docker.DockerClient,
    process: subprocess.Popen[bytes] | None,
    actions: list[str],
) -> None:
    """One fault among those possible now (`process`: the supervisor, when it may be killed); when
    none is (nothing runs, the supervisor just started or is down), the step is idle, said so."""
    running = client.containers.list(
        filters={"label": f"io.ceres-supervisor.cluster={cluster.name}", "status": "running"}
    )
    kinds = ["kill", "pause", "freeze"] * bool(running) + ["supervisor"] * (process is not None)
    if not kinds:
        actions.append("idle: no container running, the supervisor not to be killed yet")
        return
    kind = rng.choices(
        kinds, weights=[{"kill": 4, "pause": 2, "freeze": 2, "supervisor": 2}[k] for k in kinds]
    )[0]
    if kind == "supervisor":
        assert process is not None
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        actions.append("supervisor killed")
        return
    target = rng.choice(running)
    node = target.labels.get("io.ceres-supervisor.node", "?")
    role = target.labels.get("io.ceres-supervisor.role")
    try:
        if kind == "kill":
            kill_main_process(target)  # guards Pid 0 (died meanwhile): os.kill(0) would kill our group
        elif kind == "pause":
            target.pause()
        else:  # freeze: a CeresDB node's etcd client, a meta member's HTTP
            hook = "freeze-lease" if role == "ceresdb" else "freeze-http"
            result = target.exec_run(["ceres-emulator-fault", hook])
            if result.exit_code != 0:
                raise docker.errors.APIError(f"the fault hook failed: {result.output!r}")
    except (docker.errors.APIError, ProcessLookupError, KeyError) as err:
        actions.append(f"missed {kind} {node}: {err}")  # it died or changed under us: counted apart
        return
    actions.append(f"{kind} {node}")
