"""The testkit's simulated machines (testkit/machines.py: one Docker Engine per machine) and its TCP
proxy (testkit/proxy.py), against the real Docker Engine and real sockets.

Each step's cost is printed (`pytest -s` shows it): engine start, image provisioning, restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest
import requests
from docker.models.containers import Container

from testkit.helpers import TEST_LABEL, free_ports, http_json, save_logs, wait_until
from testkit.machines import (
    Engine,
    Engines,
    _alive,
    _cgroups,
    _mounts_under,
    _pids_mentioning,
    bridge_name,
    reap_stale,
)
from testkit.proxy import Proxy
from testkit.standins import IMAGE_PREFIX, StandIns, cluster_toml

from ..conftest import failed

pytestmark = pytest.mark.xdist_group("testkit-machines")

PROJECT = Path(__file__).resolve().parents[2]
VERSION = "1.2.7"
SLEEPER = ["python3", "-c", "import time; time.sleep(3600)"]
"""A container that does nothing, on the stand-in image (its Python)."""


def cost(what: str, seconds: float) -> None:
    print(f"cost: {what}: {seconds:.2f}s")


@pytest.fixture(scope="session")
def engines(docker_client: docker.DockerClient) -> Iterator[Engines]:
    started = time.monotonic()
    with Engines(docker_client, versions=[VERSION]) as pool:
        cost("pool", time.monotonic() - started)
        yield pool
        closing = time.monotonic()
    cost("pool close", time.monotonic() - closing)


@pytest.fixture
def machines(engines: Engines, request: pytest.FixtureRequest) -> Iterator[Callable[[int], list[Engine]]]:
    """Start engines for this test; they are removed when it ends (their logs kept if it failed)."""
    made: list[Engine] = []

    def start(n: int = 1) -> list[Engine]:
        began = time.monotonic()
        new = engines.start(n)
        cost(f"start({n})", time.monotonic() - began)
        print("cost:", {step: round(seconds, 3) for step, seconds in engines.costs.items()})
        made.extend(new)
        return new

    yield start
    if failed(request):
        for engine in made:
            if engine.frozen:
                engine.thaw()
            containers = engine.client.containers.list(all=True) if engine.running else []
            save_logs(f"{request.node.name}-{engine.name}", containers, [engine.log])
    began = time.monotonic()
    engines.remove(*made)
    cost(f"remove({len(made)})", time.monotonic() - began)


def run_meta(engine: Engine, root: Path) -> tuple[Container, str]:
    """The meta stand-in on `engine` (host networking), healthy; its health URL on loopback."""
    standins = StandIns(engine.client, root)
    spec = standins.load(cluster_toml(meta=1, db=1, version=VERSION))
    began = time.monotonic()
    container = standins.run(spec, "meta0")
    url = f"http://127.0.0.1:{spec.meta.nodes[0].http_port}{spec.release.meta_health_path}"
    wait_until(lambda: http_json(url, timeout_s=1)[0] == 200, 30, f"the meta stand-in answering at {url}")
    cost("meta stand-in healthy", time.monotonic() - began)
    return container, url


def answers(url: str) -> bool:
    try:
        return http_json(url, timeout_s=1)[0] == 200
    except OSError:
        return False


# --- machines ----------------------------------------------------------------------------------------


def test_an_engine_of_its_own_runs_a_stand_in_reached_on_loopback(
    machines: Callable[[int], list[Engine]], docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    m0, m1 = machines(2)
    assert m0.url == f"unix://{m0.socket}" and m0.url.startswith("unix:///")
    main_images = {
        docker_client.images.get(ref).id
        for ref in (f"{IMAGE_PREFIX}/ceresmeta-server:{VERSION}", f"{IMAGE_PREFIX}/ceresdb-server:{VERSION}")
    }
    for engine in (m0, m1):
        assert {image.id for image in engine.client.images.list()} == main_images
    ids = {m0.client.info()["ID"], m1.client.info()["ID"], docker_client.info()["ID"]}
    assert len(ids) == 3, "each engine is a machine of its own"
    assert len({m0.containerd_pid(), m1.containerd_pid()} - {None}) == 2
    found = subprocess.run(
        ["pgrep", "-x", "dockerd"], capture_output=True, text=True, check=False
    ).stdout.split()
    assert not {str(m0.pid), str(m1.pid)} & set(found), (
        "`pgrep -x dockerd` (ensure-docker.sh) finds the main engine only"
    )

    container, url = run_meta(m0, tmp_path)
    assert answers(url)
    assert [c.id for c in m0.client.containers.list()] == [container.id]
    assert m1.client.containers.list(all=True) == []
    main_ids = {c.id for c in docker_client.containers.list(all=True)}
    assert container.id not in main_ids, "the main engine does not see the machine's containers"
    assert not main_ids & {c.id for c in m0.client.containers.list(all=True)}


def test_a_frozen_engine_hangs_its_api_while_its_containers_answer(
    machines: Callable[[int], list[Engine]], docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    m0, m1 = machines(2)
    container, url = run_meta(m0, tmp_path)
    quick = m0.new_client(1)
    try:
        m0.freeze()
        began = time.monotonic()
        with pytest.raises(requests.exceptions.Timeout):
            quick.ping()
        assert 0.9 < time.monotonic() - began < 5
        fresh = m0.new_client(1)  # made while frozen: no request until used
        with pytest.raises(requests.exceptions.Timeout):
            fresh.containers.list()
        fresh.close()
        assert answers(url), "its containers run on"
        assert m1.client.ping() and docker_client.ping(), "the other engines answer"

        waiting: list[list[Container]] = []
        call = threading.Thread(target=lambda: waiting.append(m0.client.containers.list()))
        call.start()  # an API call made while frozen is answered once thawed
        call.join(0.5)
        assert call.is_alive() and not waiting
    finally:
        m0.thaw()
    call.join(10)
    assert waiting and [c.id for c in waiting[0]] == [container.id]
    assert quick.ping()
    quick.close()
    assert answers(url)


def test_a_restarted_engine_killed_its_containers_and_answers_again(
    machines: Callable[[int], list[Engine]], docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    (m0,) = machines(1)
    container, url = run_meta(m0, tmp_path)
    main_id = docker_client.info()["ID"]
    before = m0.pid
    m0.restart()
    cost("restart (stop: the meta stand-in's SIGTERM, then start)", m0.costs["restart"])
    assert m0.pid not in (None, before)
    assert m0.client.ping()
    container.reload()  # the same data root: the container is still known, and dead
    assert container.status == "exited"
    assert not answers(url)
    assert [c.id for c in m0.client.containers.list(all=True)] == [container.id]
    assert docker_client.info()["ID"] == main_id and docker_client.ping()

    m0.stop()
    assert m0.pid is None and m0.containerd_pid() is None
    m0.start()
    container.start()  # the machine is back: what it keeps runs again
    wait_until(lambda: answers(url), 30, "the meta stand-in again")


CHILD = """
import json, sys
import docker
from testkit.machines import Engines
pool = Engines(docker.from_env(timeout=60), versions=[sys.argv[1]])
(m,) = pool.start(1)
c = m.client.containers.run(sys.argv[2], entrypoint=json.loads(sys.argv[3]), network_mode="host", detach=True)
c.reload()
m.freeze()  # the worst case: a frozen engine
print(json.dumps({"root": str(m.root), "run": str(pool.root), "cgroup": m.cgroup_parent.lstrip("/"),
                  "pids": [m.pid, m.containerd_pid(), c.attrs["State"]["Pid"]]}), flush=True)
sys.stdin.read()
"""


def test_what_a_killed_run_left_is_reaped_by_the_next(docker_client: docker.DockerClient) -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            VERSION,
            f"{IMAGE_PREFIX}/ceresdb-server:{VERSION}",
            json.dumps(SLEEPER),
        ],
        cwd=PROJECT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(PROJECT)},
    )
    assert child.stdout is not None and child.stdin is not None
    try:
        left = json.loads(child.stdout.readline())
    finally:
        child.kill()
        child.wait(10)
        child.stdout.close()
        child.stdin.close()
    root, run = Path(left["root"]), Path(left["run"])
    assert all(_alive(pid) for pid in left["pids"]), "dockerd, containerd and the container outlive the run"
    assert _mounts_under(root) and _cgroups(left["cgroup"])

    began = time.monotonic()
    reap_stale()  # what every new pool does first (another test process's pool may get there first)
    cost("reaping a killed run (a frozen engine, one container)", time.monotonic() - began)
    assert not any(_alive(pid) for pid in left["pids"])
    assert not _pids_mentioning(f"{run}/")
    assert not _mounts_under(run) and not run.exists()
    assert not _cgroups(left["cgroup"])


def test_closing_a_pool_leaves_nothing(docker_client: docker.DockerClient) -> None:
    """Nothing of the pool is left, and the main engine keeps its bridge: a dockerd started with
    --bridge=none deletes the host's docker0, and every container of the main engine on the
    default network then fails to start."""
    pool = Engines(docker_client, versions=[VERSION])
    (m0,) = pool.start(1)
    assert Path("/sys/class/net/docker0").exists()
    assert Path(f"/sys/class/net/{bridge_name(m0.root)}").exists()
    m0.client.containers.run(
        f"{IMAGE_PREFIX}/ceresdb-server:{VERSION}",
        entrypoint=SLEEPER,
        network_mode="host",
        detach=True,
        labels={TEST_LABEL: "testkit"},
    )
    m0.freeze()
    began = time.monotonic()
    pool.close()
    cost("closing a pool (a frozen engine, one container)", time.monotonic() - began)
    assert not pool.root.exists() and not _mounts_under(pool.root)
    assert not _pids_mentioning(f"{pool.root}/")
    assert not _cgroups(m0.cgroup_parent.lstrip("/"))
    assert Path("/sys/class/net/docker0").exists()
    assert not Path(f"/sys/class/net/{bridge_name(m0.root)}").exists()
    pool.close()  # again: nothing to do


# --- proxy -------------------------------------------------------------------------------------------


class EchoHandler(socketserver.BaseRequestHandler):
    server: Echo

    def handle(self) -> None:
        self.server.accepted += 1
        with contextlib.suppress(ConnectionResetError):  # a cut proxy resets
            while data := self.request.recv(65536):
                self.request.sendall(data)


class Echo(socketserver.ThreadingTCPServer):
    """Echoes every connection on 127.0.0.1:<free port> until EOF; counts the connections."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.accepted = 0
        super().__init__(("127.0.0.1", free_ports(1)[0]), EchoHandler)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


@pytest.fixture
def echo() -> Iterator[Echo]:
    server = Echo()
    yield server
    server.stop()


@pytest.fixture
def proxy(echo: Echo) -> Iterator[Proxy]:
    with Proxy("127.0.0.1", echo.port, name="echo") as p:
        yield p


def connect(proxy: Proxy, timeout_s: float = 0.5) -> socket.socket:
    sock = socket.create_connection((proxy.host, proxy.port), timeout=5)
    sock.settimeout(timeout_s)
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_the_proxy_forwards_both_ways_with_back_pressure(proxy: Proxy, echo: Echo) -> None:
    payload = os.urandom(8 << 20)  # far more than the sockets' buffers: flow control is exercised
    with connect(proxy, timeout_s=10) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        assert recv_exactly(sock, len(payload)) == payload
        sender.join(10)
        sock.shutdown(socket.SHUT_WR)  # the half-close passes: the echo ends, so does the connection
        assert sock.recv(1) == b""
    assert proxy.forwarded == {"up": len(payload), "down": len(payload)}
    assert echo.accepted == 1
    wait_until(lambda: proxy.connections == 0, 5, "the connection closed at the proxy")


def test_a_frozen_proxy_passes_nothing_and_closes_nothing(proxy: Proxy, echo: Echo) -> None:
    with connect(proxy) as before:
        before.sendall(b"one")
        assert recv_exactly(before, 3) == b"one"
        proxy.freeze()
        before.sendall(b"two")
        with pytest.raises(TimeoutError):
            before.recv(16)
        with connect(proxy) as during:  # accepted...
            during.sendall(b"three")
            with pytest.raises(TimeoutError):
                during.recv(16)  # ...and nothing passes
            assert echo.accepted == 1, "the target does not see a connection made during the partition"
            assert proxy.connections == 2 and proxy.state == "frozen"
            proxy.thaw()
            assert recv_exactly(before, 3) == b"two"
            assert recv_exactly(during, 5) == b"three"
            assert echo.accepted == 2


def test_a_cut_proxy_resets_and_refuses_until_thawed(proxy: Proxy) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"
        proxy.cut()
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((proxy.host, proxy.port), timeout=2).close()
    assert proxy.connections == 0 and proxy.state == "cut"
    proxy.thaw()
    with connect(proxy) as sock:
        sock.sendall(b"back")
        assert recv_exactly(sock, 4) == b"back"


async def test_the_proxy_from_an_async_test(proxy: Proxy) -> None:
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    try:
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        proxy.freeze()
        writer.write(b"held")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readexactly(4), 0.3)
        proxy.thaw()
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"held"
    finally:
        writer.close()
        await writer.wait_closed()


def test_the_proxy_talks_to_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        Proxy("10.0.0.1", 2379)
    with pytest.raises(ValueError, match="loopback"):
        Proxy("127.0.0.1", 2379, host="0.0.0.0")
