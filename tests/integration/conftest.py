"""The real daemon, in-process, against the real Docker Engine and the stand-in images."""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import docker
import pytest
from docker.models.containers import Container

from ceres_supervisor.cli import oneshot
from ceres_supervisor.daemon import app
from ceres_supervisor.decisions.planning import NodeRecord, NodeView
from ceres_supervisor.desired import loading
from ceres_supervisor.desired.containers import LABEL_CLUSTER
from ceres_supervisor.model.spec import DesiredState
from ceres_supervisor.surfaces import api
from testkit.helpers import free_ports, http_json, save_logs
from testkit.standins import FastTicks, cluster_toml

from ..conftest import failed

T = TypeVar("T")

FAST: dict[str, object] = {
    "probe_interval": "1s",
    "probe_timeout": "500ms",
    "failure_threshold": 3,
    "start_timeout": "30s",
    "lease_grace": "5s",
    "backoff_initial": "1s",
    "backoff_max": "8s",
    "crashloop_failures": 4,
    "stop_timeout": "10s",
}
"""Supervisor settings for tests: fast probes, short grace and backoff."""


def supervisor_table(**overrides: object) -> str:
    settings = {"listen": f"127.0.0.1:{free_ports(1)[0]}", **FAST, **overrides}
    lines = ["[supervisor]"] + [
        f"{k} = {v!r}".replace("'", '"') if isinstance(v, str) else f"{k} = {v}" for k, v in settings.items()
    ]
    return "\n".join(lines) + "\n"


async def eventually(
    predicate: Callable[[], T | Awaitable[T | None] | None],
    timeout_s: float,
    what: str,
    interval_s: float = 0.05,
) -> T:
    """Poll until `predicate` returns something truthy, without blocking the event loop."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            last = value
        except Exception as err:
            last = f"{type(err).__name__}: {err}"
        else:
            if value:
                return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last seen: {last!r}")
        await asyncio.sleep(interval_s)


@dataclass
class Cluster:
    """A desired-state file for one test, and the supervisor running it (when started)."""

    client: docker.DockerClient
    root: Path
    name: str
    text: str
    supervisor: app.Supervisor | None = None
    task: asyncio.Task[int] | None = None
    api_url: str = ""
    ticks: FastTicks | None = None

    @property
    def path(self) -> Path:
        return self.root / "cluster.toml"

    @property
    def spec(self) -> DesiredState:
        assert self.supervisor is not None
        return self.supervisor.spec

    def write(self, text: str | None = None) -> Path:
        if text is not None:
            self.text = text
        self.path.write_text(self.text)
        return self.path

    async def start(
        self, docker_url: str | None = None, handle_signals: bool = False, host: str | None = None
    ) -> app.Supervisor:
        """The daemon as `ceres-supervisor run` assembles it: API bound first, then the loop."""
        self.write()
        loaded = loading.load(self.path)
        place = await oneshot.decide_locality(loaded, host)
        self.supervisor = app.Supervisor(loaded, place, config_path=str(self.path), docker_url=docker_url)
        server = api.ApiServer(self.supervisor)
        await server.start()
        self.api_url = "http://" + loaded.spec.supervisor.listen.replace("0.0.0.0", "127.0.0.1")
        self.task = asyncio.create_task(
            self.supervisor.run(server, handle_signals=handle_signals),
            name="supervisor-under-test",
        )
        await eventually(
            lambda: self.supervisor is not None and self.supervisor.ready.is_set(), 30, "first cycle"
        )
        return self.supervisor

    def close(self) -> None:
        if self.ticks is not None:
            self.ticks.__exit__()

    async def stop(self) -> None:
        if self.supervisor is not None and self.task is not None and not self.task.done():
            self.supervisor.request_stop()
            await asyncio.wait_for(self.task, timeout=60)
        if self.task is not None and self.task.done() and not self.task.cancelled():
            self.task.result()  # surface a crash of the daemon as a test failure

    def container_name(self, node: str) -> str:
        return f"ceres-{self.name}-{node}"

    async def container(self, node: str) -> Container:
        return await asyncio.to_thread(self.client.containers.get, self.container_name(node))

    async def containers(self) -> list[Container]:
        return await asyncio.to_thread(
            self.client.containers.list, all=True, filters={"label": f"{LABEL_CLUSTER}={self.name}"}
        )

    def view(self, node: str) -> NodeView | None:
        snap = self.supervisor.snapshot if self.supervisor else None
        return snap.plan.views.get(node) if snap and snap.plan else None

    def state(self, node: str) -> str | None:
        view = self.view(node)
        return str(view.state) if view else None

    def in_state(self, node: str, state: str) -> bool:
        """For `eventually`: true in `state`, else an error naming the state and reason seen."""
        view = self.view(node)
        if view is None or str(view.state) != state:
            seen = f"{view.state}: {view.reason}" if view else "not planned yet"
            raise AssertionError(f"{node} is {seen}")
        return True

    def record(self, node: str) -> NodeRecord:
        assert self.supervisor is not None
        return self.supervisor.records.get(node, NodeRecord())

    def cluster_state(self) -> str | None:
        return self.supervisor.snapshot.cluster_state if self.supervisor else None

    async def serving(self, node: str, timeout_s: float = 60) -> None:
        """The node answers its probes again (healthy, or reopening: waiting for its shards)."""
        await eventually(
            lambda: self.state(node) in ("healthy", "reopening"),
            timeout_s,
            f"{node} serving (states: {self._states()})",
        )

    async def cycles(self, count: int, timeout_s: float = 30) -> None:
        """Until the loop has gone round `count` more times: each a chance to act (a condition, not
        a window of seconds)."""
        assert self.supervisor is not None
        loop = self.supervisor.loop
        target = loop.cycles + count + 1  # the cycle under way may have observed before the change
        await eventually(lambda: loop.cycles >= target, timeout_s, f"{count} more cycles")

    async def healthy(self, timeout_s: float = 60) -> None:
        await eventually(
            lambda: self.cluster_state() == "healthy",
            timeout_s,
            f"cluster {self.name} healthy (states: {self._states()})",
        )

    def _states(self) -> dict[str, Any]:
        snap = self.supervisor.snapshot if self.supervisor else None
        return {n: (str(v.state), v.reason) for n, v in snap.plan.views.items()} if snap and snap.plan else {}

    def node_spec(self, node: str) -> Any:
        return next(n for n in [*self.spec.meta.nodes, *self.spec.ceresdb.nodes] if n.name == node)


@dataclass
class Daemon:
    """`ceres-supervisor run` as its own process (what systemd runs), its log in a file."""

    config: Path
    log: Path
    host: str | None = None
    env: dict[str, str] | None = None
    process: subprocess.Popen[bytes] | None = None
    listen: str = ""
    """`--listen`: this daemon's API instead of the file's (several agents, one file)."""
    docker_url: str = ""
    """`--docker-url`: the Docker Engine of its simulated machine."""
    store: str = ""
    """`--store`: the etcd members it talks to (through proxies a test can freeze)."""

    def start(self) -> Daemon:
        args = [
            sys.executable,
            "-m",
            "ceres_supervisor",
            "run",
            "-c",
            str(self.config),
            "--log-level",
            "debug",
        ]
        if self.host:
            args += ["--host", self.host]
        if self.listen:
            args += ["--listen", self.listen]
        if self.docker_url:
            args += ["--docker-url", self.docker_url]
        if self.store:
            args += ["--store", self.store]
        with self.log.open("ab") as handle:
            self.process = subprocess.Popen(
                args, stdout=handle, stderr=handle, env={**os.environ, **(self.env or {})}
            )
        return self

    @property
    def url(self) -> str:
        listen = self.listen or self.config.read_text().split('listen = "', 1)[1].split('"', 1)[0]
        return "http://" + listen.replace("0.0.0.0", "127.0.0.1")

    def get(self, path: str) -> tuple[int, Any]:
        return http_json(self.url + path, timeout_s=5)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout_s: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout_s)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def tail(self, lines: int = 30) -> str:
        return (
            "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""
        )


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Every daemon a test starts is stopped (SIGTERM, then SIGKILL) when it ends, also on failure."""
    started: list[Daemon] = []
    try:
        yield started
    finally:
        for daemon in started:
            daemon.stop()


@pytest.fixture
async def make_cluster(
    docker_client: docker.DockerClient, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(
        meta: int = 1,
        db: int = 2,
        extra: str = "",
        version: str = "1.2.7",
        supervisor: dict[str, object] | None = None,
        state_root: Path | None = None,
        **kwargs: Any,
    ) -> Cluster:
        name = f"t{uuid.uuid4().hex[:8]}"
        root = (state_root or tmp_path) / name
        root.mkdir()
        settings = "\n" + supervisor_table(**(supervisor or {}))
        text = cluster_toml(
            meta=meta,
            db=db,
            version=version,
            cluster_name=name,
            state_dir=str(root / "state"),
            extra=settings + extra,
            **kwargs,
        )
        cluster = Cluster(docker_client, root, name, text)
        cluster.ticks = FastTicks(docker_client, name).__enter__()
        made.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            try:
                await cluster.stop()
            finally:
                cluster.close()
                containers = await cluster.containers()
                if failed(request):
                    # etcd's own logs and the supervisors' (a test that runs one writes it here)
                    logs = [
                        *(cluster.root / "state" / "data").glob("*/etcd.log"),
                        *cluster.root.glob("*.log"),
                    ]
                    await asyncio.to_thread(save_logs, request.node.name, containers, logs)
                for container in containers:
                    await asyncio.to_thread(container.remove, force=True)
