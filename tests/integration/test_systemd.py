"""systemd: the unit verifies, sd_notify speaks the protocol, and a real systemd runs the daemon."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from testkit import emulator as build
from testkit.helpers import SESSION, TEST_LABEL, http_json

from .conftest import Cluster, eventually
from .test_reload import identities

PROJECT = Path(__file__).resolve().parents[2]
UNIT = PROJECT / "systemd" / "ceres-supervisor.service"
VENV_BIN = Path(sys.executable).parent
SYSTEMD_ROOT = Path("/var/lib/ceres-supervisor-test")
SOCKET = "/run/ceres-supervisor/api.sock"
"""The API's socket under the unit's RuntimeDirectory (ProtectSystem=strict leaves only that writable)."""
"""Outside /tmp: the unit has PrivateTmp=yes, and Docker resolves bind mounts on the host."""


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = tmp_path / "ceres-supervisor.service"
    # The only machine-specific part is where the command is installed: point it at this venv.
    unit.write_text(
        UNIT.read_text().replace("/usr/local/bin/ceres-supervisor", str(VENV_BIN / "ceres-supervisor"))
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "ceres-supervisor.service" not in result.stderr, result.stderr
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "WatchdogSec=",
        "TimeoutStopSec=",
        "EnvironmentFile=-/etc/default/ceres-supervisor",
        "RuntimeDirectory=ceres-supervisor",
    ):
        assert line in text
    assert "After=docker.service" in text and "Wants=docker.service" in text
    assert not any(line.startswith(("Requires=", "BindsTo=", "PartOf=")) for line in text.splitlines())


class NotifySocket:
    """A real unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[list[str]] = []

    def pump(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return
            self.messages.append(data.decode().split("\n"))

    def fields(self) -> list[str]:
        return [field for message in self.messages for field in message]

    def close(self) -> None:
        self.sock.close()


async def test_sd_notify_messages_and_their_order(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    cluster = make_cluster()
    cluster.write()
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"}
    process = subprocess.Popen(
        [sys.executable, "-m", "ceres_supervisor", "run", "-c", str(cluster.path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = "http://" + cluster.text.split('listen = "', 1)[1].split('"', 1)[0]

    async def seen(field_prefix: str, after: int = 0) -> int:
        def check() -> list[int] | None:
            notify.pump()
            fields = notify.fields()
            found = [i for i in range(after, len(fields)) if fields[i].startswith(field_prefix)]
            return found or None

        found = await eventually(lambda: asyncio.to_thread(check), 60, f"{field_prefix} after field {after}")
        return found[0]

    try:
        ready = await seen("READY=1")
        assert http_json(f"{url}/healthz")[0] == 200  # READY comes after the API is bound and a cycle ran
        assert not any(f.startswith(("RELOADING=1", "STOPPING=1")) for f in notify.fields()[:ready])
        await seen("WATCHDOG=1")
        await seen("STATUS=")

        # A good reload: RELOADING=1 with MONOTONIC_USEC, then READY=1.
        cluster.write(
            cluster.text.replace('name = "db1"', 'name = "db1"\nconfig = { logger = { level = "warn" } }')
        )
        before_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        mark = len(notify.fields())
        process.send_signal(signal.SIGHUP)
        reloading = await seen("RELOADING=1", mark)
        message = next(
            m for m in notify.messages if "RELOADING=1" in m and notify.fields().index(m[0]) >= mark
        )
        usec = int(next(f for f in message if f.startswith("MONOTONIC_USEC=")).split("=", 1)[1])
        assert before_usec <= usec <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        await seen("READY=1", reloading + 1)

        # A bad reload: RELOADING=1, then READY=1 again (the last good spec runs) and a STATUS saying so.
        cluster.write("bogus = 1\n" + cluster.text)
        mark = len(notify.fields())
        process.send_signal(signal.SIGHUP)
        reloading = await seen("RELOADING=1", mark)
        await seen("READY=1", reloading + 1)
        await seen("STATUS=", reloading + 1)
        failed = [f for f in notify.fields()[reloading:] if f.startswith("STATUS=") and "reload failed" in f]
        assert failed and "bogus: unknown key" in failed[0], notify.fields()[reloading:]

        mark = len(notify.fields())
        process.send_signal(signal.SIGTERM)
        await seen("STOPPING=1", mark)
        assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            await asyncio.to_thread(process.wait)
        notify.close()


@pytest.fixture
def systemd_container(docker_client: docker.DockerClient) -> Iterator[tuple[object, Path]]:
    """systemd as PID 1 in a container, with this project, its Python and the host's Docker."""
    image = build.ensure_systemd_image(docker_client)
    base = SYSTEMD_ROOT / uuid.uuid4().hex[:8]
    base.mkdir(parents=True)
    python_home = Path(os.path.realpath(sys.executable)).parents[1]
    mounts = {
        str(PROJECT): {"bind": str(PROJECT), "mode": "ro"},
        str(python_home): {"bind": str(python_home), "mode": "ro"},
        "/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
        str(base): {"bind": str(base), "mode": "rw"},
        "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
    }
    container = docker_client.containers.run(
        image,
        ["/sbin/init"],
        detach=True,
        name=f"ceres-systemd-{base.name}",
        network_mode="host",
        cap_add=["SYS_ADMIN"],
        security_opt=["seccomp=unconfined"],
        cgroupns="host",
        tmpfs={"/run": "", "/run/lock": ""},
        volumes=mounts,
        labels={TEST_LABEL: f"{SESSION}-{base.name}"},
    )
    try:
        yield container, base
    finally:
        container.remove(force=True)
        shutil.rmtree(base, ignore_errors=True)


def sh(container: object, command: str) -> tuple[int, str]:
    result = container.exec_run(["sh", "-c", command])  # type: ignore[attr-defined]
    return result.exit_code, result.output.decode(errors="replace")


def api(container: object, command: str) -> tuple[int, str]:
    """The command line inside the container, talking to the daemon on its unix socket."""
    result = container.exec_run(["sh", "-c", f"ceres-supervisor {command} --socket {SOCKET}"], stderr=False)  # type: ignore[attr-defined]
    return result.exit_code, result.output.decode(errors="replace")


async def healthy(container: object, timeout_s: float, what: str) -> None:
    """`status --local` exits 0; on a timeout the error holds what status and the journal said."""
    try:
        await eventually(
            lambda: asyncio.to_thread(lambda: api(container, "status --local")[0] == 0), timeout_s, what
        )
    except AssertionError as err:
        status = api(container, "status --local")[1]
        journal = sh(container, "journalctl -u ceres-supervisor --no-pager -o cat | tail -30")[1]
        raise AssertionError(f"{err}\nstatus:\n{status}\njournal:\n{journal}") from None


async def test_real_systemd_runs_reloads_restarts_and_stops_the_daemon(
    make_cluster: Callable[..., Cluster], systemd_container: tuple[object, Path]
) -> None:
    container, base = systemd_container
    # The API on a unix socket under the unit's RuntimeDirectory, and a secret from its EnvironmentFile.
    store = (
        '\n[ceresdb.object_store]\ntype = "Aliyun"\nkey_id = "id"\nkey_secret = { env = "CERES_TEST_KEY" }\n'
        'endpoint = "http://oss.invalid"\nbucket = "b"\nprefix = "p"\n'
    )
    cluster = make_cluster(state_root=base, supervisor={"listen": f"unix:{SOCKET}"}, extra=store)
    cluster.write()
    await eventually(
        lambda: asyncio.to_thread(
            lambda: sh(container, "systemctl is-system-running")[1].strip() in ("running", "degraded")
        ),
        60,
        "systemd up",
    )
    dropin = "[Service]\\nReadWritePaths=" + str(base) + "\\n"
    if str(PROJECT).startswith("/tmp/"):
        dropin += "PrivateTmp=no\\n"  # this checkout lives in /tmp, which PrivateTmp would hide
    code, out = await asyncio.to_thread(
        sh,
        container,
        " && ".join(
            [
                f"ln -sf {VENV_BIN}/ceres-supervisor /usr/local/bin/ceres-supervisor",
                f"mkdir -p /etc/ceres-supervisor && ln -sf {cluster.path} /etc/ceres-supervisor/cluster.toml",
                f"cp {UNIT} /etc/systemd/system/ceres-supervisor.service",
                # The engine runs on the host; inside, docker.service stands for it (Wants=docker.service).
                "printf '[Unit]\\nDescription=the host Docker Engine, reached through its socket\\n[Service]\\n"
                "Type=oneshot\\nRemainAfterExit=yes\\nExecStart=/usr/bin/test -S /var/run/docker.sock\\n'"
                " > /etc/systemd/system/docker.service",
                "printf 'CERES_TEST_KEY=s3cret-from-the-environment-file\\n' > /etc/default/ceres-supervisor",
                "chmod 0600 /etc/default/ceres-supervisor",
                "mkdir -p /etc/systemd/system/ceres-supervisor.service.d",
                f"printf '{dropin}' > /etc/systemd/system/ceres-supervisor.service.d/test.conf",
                "systemctl daemon-reload",
            ]
        ),
    )
    assert code == 0, out

    # systemctl start returns once READY=1: the API answers and the unit is active at that moment.
    code, out = await asyncio.to_thread(sh, container, "systemctl start ceres-supervisor")
    assert code == 0, out + sh(container, "journalctl -u ceres-supervisor --no-pager | tail -20")[1]
    assert sh(container, "systemctl is-active ceres-supervisor")[1].strip() == "active"
    assert sh(container, f"test -S {SOCKET}")[0] == 0
    assert api(container, "status --local")[0] in (0, 1)  # it answers on the socket
    await healthy(container, 90, "cluster healthy")
    rendered = base / cluster.name / "state" / "config" / "db0" / "ceresdb.toml"
    assert (
        "s3cret-from-the-environment-file" in rendered.read_text()
    )  # the secret came from the EnvironmentFile
    before = await identities(cluster)

    # A restart of docker.service (a package upgrade) does not restart the supervisor (Wants=, not Requires=).
    pid = sh(container, "systemctl show -p MainPID --value ceres-supervisor")[1].strip()
    assert sh(container, "systemctl restart docker.service")[0] == 0
    assert sh(container, "systemctl show -p MainPID --value ceres-supervisor")[1].strip() == pid
    assert sh(container, "systemctl is-active ceres-supervisor")[1].strip() == "active"

    # systemctl reload applies a changed file: only db1 is recreated.
    cluster.write(
        cluster.text.replace('name = "db1"', 'name = "db1"\nconfig = { logger = { level = "warn" } }')
    )
    code, out = await asyncio.to_thread(sh, container, "systemctl reload ceres-supervisor")
    assert code == 0, out

    async def db1_recreated() -> bool:
        now = await identities(cluster)
        return "db1" in now and now["db1"][0] != before["db1"][0]

    await eventually(db1_recreated, 60, "db1 recreated by the reload")
    await healthy(container, 90, "healthy again")
    after_reload = await identities(cluster)
    assert after_reload["meta0"] == before["meta0"] and after_reload["db0"] == before["db0"]

    # SIGKILL of the main process: systemd starts it again; the containers are not touched.
    pid = sh(container, "systemctl show -p MainPID --value ceres-supervisor")[1].strip()
    assert pid.isdigit() and pid != "0"
    assert sh(container, f"kill -9 {pid}")[0] == 0

    def restarted() -> bool:
        new = sh(container, "systemctl show -p MainPID --value ceres-supervisor")[1].strip()
        active = sh(container, "systemctl is-active ceres-supervisor")[1].strip()
        return new not in (pid, "0", "") and active == "active"

    await eventually(lambda: asyncio.to_thread(restarted), 60, "systemd restarting the supervisor")
    await healthy(container, 60, "healthy after")
    assert await identities(cluster) == after_reload

    # systemctl stop honours on_exit: "leave" keeps them, "stop" (applied by a reload) stops them.
    cluster.write(cluster.text.replace("[supervisor]\n", '[supervisor]\non_exit = "stop"\n'))
    assert sh(container, "systemctl reload ceres-supervisor")[0] == 0

    def on_exit_applied() -> bool:
        code, out = api(container, "events --json -n 20")
        return code == 0 and any(json.loads(line)["type"] == "reloaded" for line in out.splitlines())

    await eventually(lambda: asyncio.to_thread(on_exit_applied), 30, "the on_exit change applied")
    code, out = await asyncio.to_thread(sh, container, "systemctl stop ceres-supervisor")
    assert code == 0, out
    states = {c.labels["io.ceres-supervisor.node"]: c.status for c in await cluster.containers()}
    assert states == {"meta0": "exited", "db0": "exited", "db1": "exited"}
