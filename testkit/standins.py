"""Run stand-in containers straight from configs our renderer produced (no supervisor).

Used by the emulator's own tests and by the benchmarks' "by hand" floor.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import requests
from docker.models.containers import Container

from ceres_supervisor.desired import files, loading, rendering, secrets
from ceres_supervisor.model.spec import DesiredState
from testkit.emulator import REPOSITORY
from testkit.helpers import SESSION, TEST_LABEL, free_ports

IMAGE_PREFIX = REPOSITORY
"""Where the stand-in images are: `ceres-emulator`, or `CERES_EMULATOR_REPOSITORY` (testkit/emulator.py)."""
"""The stand-in images' repository (another one only to try images being worked on)."""


def cluster_toml(
    meta: int = 1,
    db: int = 2,
    version: str = "1.2.2",
    extra: str = "",
    image_prefix: str = IMAGE_PREFIX,
    cluster_name: str = "defaultCluster",
    state_dir: str = "/var/lib/ceres-supervisor",
) -> str:
    """A cluster on loopback addresses 127.0.0.1.. with free ports, on the stand-in images."""
    v2 = version.startswith("2")
    meta_image = f"{image_prefix}/{'horaemeta' if v2 else 'ceresmeta'}-server:{version}"
    db_image = f"{image_prefix}/{'horaedb' if v2 else 'ceresdb'}-server:{version}"
    ports = iter(free_ports(3 * meta + 4 * db))
    lines = [
        "[cluster]",
        f'name = "{cluster_name}"',
        f'state_dir = "{state_dir}"',
        f'version = "{version}"',
        f'flavor = "{"horaedb" if v2 else "ceresdb"}"',
        "",
        "[meta]",
        f'image = "{meta_image}"',
        "",
        "[ceresdb]",
        f'image = "{db_image}"',
        "shard_lock_ttl = 15",
        "",
    ]
    for i in range(meta):
        lines += [
            "[[meta.nodes]]",
            f'name = "meta{i}"',
            f'host = "127.0.0.{i + 1}"',
            f"client_port = {next(ports)}",
            f"peer_port = {next(ports)}",
            f"http_port = {next(ports)}",
            "",
        ]
    for i in range(db):
        lines += [
            "[[ceresdb.nodes]]",
            f'name = "db{i}"',
            f'host = "127.0.0.{i + 1}"',
            f"grpc_port = {next(ports)}",
            f"http_port = {next(ports)}",
            f"mysql_port = {next(ports)}",
        ]
        pg = next(ports)
        if version >= "1.2.6" or v2:
            lines.append(f"postgresql_port = {pg}")
        lines.append("")
    return "\n".join(lines) + "\n" + extra


@dataclass
class StandIns:
    """Starts rendered nodes as containers labelled for cleanup."""

    client: docker.DockerClient
    root: Path
    run_id: str = field(default_factory=lambda: f"{SESSION}-{uuid.uuid4().hex[:8]}")

    def load(self, text: str) -> DesiredState:
        path = self.root / "cluster.toml"
        path.write_text(text)
        return loading.load(path).spec

    def run(
        self,
        spec: DesiredState,
        name: str,
        env: dict[str, str] | None = None,
        edit: Callable[[str], str] | None = None,
    ) -> Container:
        """Run node `name` as the supervisor would; `edit` changes its rendered config first (a
        setting the supervisor never renders, to show what the server does with it)."""
        node = next(n for n in rendering.render(spec) if n.name == name)
        config_dir = self.root / "config" / name
        files.write_node(config_dir, node, secrets.resolve)
        if edit is not None:
            config = config_dir / node.config_name
            config.write_text(edit(config.read_text()))
        data_dir = self.root / "data" / name
        data_dir.mkdir(parents=True, exist_ok=True)
        image = spec.meta.image if node.role == "meta" else spec.ceresdb.image
        return self.client.containers.run(
            image,
            detach=True,
            name=f"ceres-emutest-{self.run_id}-{name}",
            network_mode="host",
            environment={**node.env, **(env or {})},
            volumes={
                str(config_dir / node.config_name): {"bind": node.config_mount, "mode": "ro"},
                str(data_dir): {"bind": node.data_mount, "mode": "rw"},
            },
            labels={TEST_LABEL: self.run_id},
        )

    def cleanup(self) -> None:
        for container in self.client.containers.list(
            all=True, filters={"label": f"{TEST_LABEL}={self.run_id}"}
        ):
            container.remove(force=True)


def kill_main_process(container: Container) -> None:
    """SIGKILL the container's main process from the host: a crash, not a `docker kill`."""
    container.reload()
    pid = int(container.attrs["State"]["Pid"])
    if pid <= 0:  # not running: os.kill(0, ...) would hit our own process group
        raise ProcessLookupError(f"{container.name} has no main process (state {container.status})")
    os.kill(pid, signal.SIGKILL)


class FastTicks:
    """Sets each new meta stand-in's scheduler tick to `tick_s` (the real 5 s makes the first shard
    assignment at 1.2.2 take 40 s), through the stand-in's test hook, when Docker reports the
    container started: before its first tick (the hook lives in the container's layer, so a
    container is set once). Driven by Docker's event stream, not by polling. The supervisor's own
    judgement keeps the real 5 s pace."""

    def __init__(self, client: docker.DockerClient, cluster: str, tick_s: float = 0.5) -> None:
        self.client, self.cluster, self.tick_s = client, cluster, tick_s
        self.done: set[str] = set()
        self.labels = [f"io.ceres-supervisor.cluster={self.cluster}", "io.ceres-supervisor.role=meta"]
        self.stream: Any = None
        self.thread = threading.Thread(target=self._run, name=f"fast-ticks-{cluster}", daemon=True)

    def _set(self, container_id: str) -> None:
        if container_id in self.done:
            return
        try:
            result = self.client.api.exec_create(
                container_id, ["ceres-emulator-fault", "tick", str(self.tick_s)]
            )
            self.client.api.exec_start(result["Id"])
            if self.client.api.exec_inspect(result["Id"]).get("ExitCode") == 0:
                self.done.add(container_id)
        except (docker.errors.DockerException, requests.RequestException):
            pass  # gone, or the engine restarting: its next start is another event

    def _run(self) -> None:
        try:
            for c in self.client.containers.list(filters={"label": self.labels}):  # started before us
                self._set(c.id)
            for event in self.stream:
                if event.get("Action") == "start":
                    self._set(str(event.get("id")))
        except (docker.errors.DockerException, requests.RequestException, OSError, ValueError):
            return  # the stream closed (__exit__), or the engine went away with it

    def __enter__(self) -> FastTicks:
        self.stream = self.client.events(
            decode=True,
            since=int(time.time()) - 1,
            filters={"type": "container", "event": "start", "label": self.labels},
        )
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.stream is not None:
            self.stream.close()
        self.thread.join(5)


def emulator_hook(container: Container, *args: str) -> None:
    """`docker exec <container> ceres-emulator-fault <args>` (see tests/emulator/README.md)."""
    result = container.exec_run(["ceres-emulator-fault", *args])
    if args[:1] == ("exit",) and result.exit_code != 0:
        # The hook did its work before the exec ended: the container's main process exited and took
        # the exec process with it. Only a container that is still running shows a failed hook.
        container.reload()
        assert container.status != "running", (result.exit_code, result.output)
        return
    assert result.exit_code == 0, result.output


def set_scheduler_tick(containers: list[Container], seconds: float) -> None:
    """Meta's scheduler interval (real: 5 s) on each meta container; it persists in the container."""
    for container in containers:
        emulator_hook(container, "tick", str(seconds))
