"""Simulated machines: one extra Docker Engine per machine, all on this one host.

Each `Engine` is its own `dockerd` (root, started by the test process; named `ceres-dockerd` so
that `pgrep -x dockerd` still finds only the main engine) with its own unix socket,
`--data-root`, `--exec-root`, `--pidfile`, config file, key (so its own engine ID) and its own
managed containerd (under its exec-root: it never sees the main engine's containers, nor they
its). No bridge, no iptables, no IP forwarding: containers use host networking and are reached
on 127.0.0.x. Its containers live in their own cgroup, `/ceres-machines-<run>-<engine>`, so that
whatever is left of them can always be found and killed.

    # conftest.py (session-scoped: the stand-in images are provisioned once)
    from testkit.machines import Engines

    @pytest.fixture(scope="session")
    def engines(docker_client: docker.DockerClient) -> Iterator[Engines]:
        with Engines(docker_client, versions=["1.2.2"]) as pool:
            yield pool

    # a test
    async def test_machine_apart(engines: Engines, make_cluster) -> None:
        m1, m2 = engines.start(2)                  # started together, the images already there
        cluster = make_cluster(meta=2, db=2)       # tests/integration/conftest.py
        await cluster.start(docker_url=m1.url, host="127.0.0.1")  # the CLI: --docker-url <url>
        m1.client.containers.list()                # a docker.DockerClient of that engine
        m1.freeze()                                # SIGSTOP: its API hangs, its containers run on
        m1.thaw()                                  # SIGCONT
        m2.restart()                               # as a package upgrade: its containers die
        m2.stop(); m2.start()                      # the same, with a gap in between
        engines.remove(m1, m2)                     # or leave them to the pool's close()

Synchronous and blocking (a few hundred ms at most, `restart`/`stop` as long as dockerd takes):
from an async test, call them through `asyncio.to_thread` when the event loop must keep running
(an in-process supervisor); `freeze`/`thaw` are instant.

`Engine.client` is a `docker.DockerClient` with the pool's timeout (30 s); `Engine.new_client(2)`
gives one with a short timeout, and can be made while the engine is frozen (no version probe).

Images. The first `start` for a set of versions builds a *seed*: a throwaway dockerd into which
`docker save` of exactly those versions' images (meta + CeresDB, from the main engine) is streamed
(no tar file), then stopped; what it keeps (`image/` and `overlay2/` of its data root) is cached
under `/tmp/ceres-machines/images/<key>`, the key being the images' IDs (a rebuilt image makes a new
seed). Every engine's data root then starts as a copy of the seed whose layer files are hard links
(dockerd never writes a committed layer in place; `image/` is copied): about 0.1 s instead of the
2-3 s of a `docker load` per engine. If an engine does not list the expected image IDs after that,
the images are loaded into it the slow way. The measured costs are in `Engines.costs`.

Clean-up. `Engine.remove()` and `Engines.close()` (also from `atexit`) remove the engine's
containers through its API (their shims exit cleanly), then kill whatever is left of it (dockerd,
containerd, shims by command line; container processes by cgroup), unmount whatever is mounted
below its directory (the data root's bind mount, `exec/netns/default`, overlays), delete it and
its cgroups. A run killed before it could clean up leaves `/tmp/ceres-machines/<session>-<pid>-<x>/`
whose `owner` process (pid and start time) is gone: the next `Engines()` reaps it the same way
(seeds unused for a day are dropped too).

Costs measured on the 2-core test machine: a dockerd answers 0.15-0.25 s after it is started (two
started together: 0.3-0.4 s); the seed clone 0.05-0.15 s; a seed is built once per set of image
IDs in 4-4.5 s (dockerd, streaming the 160 MB of layers, stopping); `docker load` of one version
into a fresh engine took 2.1-3.3 s, which the seed saves per engine. `stop()` takes 1 s on an idle
engine (dockerd waits that long for its containerd), plus its containers' stop time (the meta
stand-in: 3 s, its etcd lingers); `remove()` 0.3-0.4 s.

Needs root, `dockerd` and `containerd` on the PATH (Debian's docker.io), cgroup v1 or v2.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import docker.errors
import requests

from testkit.helpers import SESSION
from testkit.standins import IMAGE_PREFIX

BASE = Path(os.environ.get("CERES_MACHINES_DIR", "/tmp/ceres-machines"))
"""Every engine's directory is below it, one directory per test process."""
CGROUP_PREFIX = "ceres-machines-"
"""An engine's containers are in the cgroup /ceres-machines-<run>-<engine>."""
CGROUP_ROOT = Path("/sys/fs/cgroup")
SEED_MAX_IDLE_S = 24 * 3600
"""A cached seed unused this long is removed by the next pool."""
DOCKERD_FLAGS = ["--iptables=false", "--ip-masq=false", "--ip-forward=false", "--storage-driver=overlay2"]
"""Never `--bridge=none`: a dockerd started with it deletes the host's docker0 (moby 20.10
daemon_unix.go removeDefaultBridgeInterface), the main engine's bridge. Each engine gets a bridge
of its own instead (`bridge_name`), which its containers never use (host networking)."""


def bridge_name(root: Path) -> str:
    """The bridge interface of the engine under `root`: 15 characters at most (IFNAMSIZ)."""
    return "cm" + hashlib.sha256(str(root).encode()).hexdigest()[:11]


def _bridge(name: str, present: bool) -> None:
    """Make (or delete) the bridge `name`; quiet when it already is as asked."""
    if present:
        subprocess.run(["ip", "link", "add", name, "type", "bridge"], capture_output=True, check=False)
        subprocess.run(["ip", "link", "set", name, "up"], capture_output=True, check=True)
    else:
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DOCKERD_NAME = "ceres-dockerd"
"""The engines' dockerd runs under this name (a symlink to dockerd): `pgrep -x dockerd`, with which
scripts/ensure-docker.sh and tests/serial find the main engine, never finds one of them."""


def dockerd_binary(base: Path = BASE) -> Path:
    """`base`/bin/ceres-dockerd, a symlink to dockerd (made, or mended, here)."""
    target = shutil.which("dockerd", path=PATH)
    if target is None:
        raise RuntimeError("no dockerd on the PATH (Debian: apt-get install docker.io)")
    link = base / "bin" / DOCKERD_NAME
    if not link.is_symlink() or os.readlink(link) != target:
        link.parent.mkdir(parents=True, exist_ok=True)
        temporary = link.with_name(f".{DOCKERD_NAME}-{os.getpid()}")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(target)
        temporary.replace(link)
    return link


def image_refs(versions: Iterable[str], prefix: str = IMAGE_PREFIX) -> list[str]:
    """The stand-in images of `versions`, meta and CeresDB, named as standins.cluster_toml names them."""
    refs: list[str] = []
    for version in versions:
        v2 = version.startswith("2")
        refs += [
            f"{prefix}/{'horaemeta' if v2 else 'ceresmeta'}-server:{version}",
            f"{prefix}/{'horaedb' if v2 else 'ceresdb'}-server:{version}",
        ]
    return sorted(set(refs))


# --- processes, cgroups and mounts -----------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of `pid`, or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[19])


def _alive(pid: int) -> bool:
    """Running or stopped; a zombie is gone (this machine's PID 1 does not reap orphans)."""
    found = _stat(pid)
    return found is not None and found[0] not in ("Z", "X")


def _pids_mentioning(text: str) -> list[int]:
    """Processes whose command line contains `text` (dockerd, its containerd, their shims)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def _cgroups(name_glob: str) -> list[Path]:
    """The cgroup directories named `name_glob` at the top of every hierarchy (v1, hybrid or v2)."""
    return sorted({*CGROUP_ROOT.glob(f"*/{name_glob}"), *CGROUP_ROOT.glob(name_glob)})


def _cgroup_pids(groups: Iterable[Path]) -> set[int]:
    pids: set[int] = set()
    for group in groups:
        for procs in group.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(line) for line in procs.read_text().split())
    return {pid for pid in pids if _alive(pid)}


def _kill(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _remove_cgroups(groups: Iterable[Path]) -> list[str]:
    """rmdir each cgroup, its children first; what could not be removed."""
    left = []
    for group in groups:
        for path in sorted(
            (p for p in [group, *group.rglob("*")] if p.is_dir()), key=lambda p: -len(p.parts)
        ):
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError as err:
                left.append(f"{path}: {err.strerror}")
    return left


def _mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root` in this mount namespace, deepest first."""
    prefix = str(root).rstrip("/") + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        for escaped, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
            point = point.replace(escaped, char)
        if point == str(root) or point.startswith(prefix):
            points.append(point)
    return sorted(set(points), key=lambda p: -p.count("/"))


_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2


def _unmount_under(root: Path) -> None:
    for _ in range(5):  # a lazy unmount can reveal a mount that was below it
        points = _mounts_under(root)
        if not points:
            return
        for point in points:
            if _libc.umount2(point.encode(), MNT_DETACH) != 0:
                err = ctypes.get_errno()
                if err not in (errno.EINVAL, errno.ENOENT):
                    raise OSError(err, f"umount {point}: {os.strerror(err)}")


def _remove_tree(root: Path) -> None:
    """Unmount everything below `root`, then delete it; never deletes through a mount."""
    if not root.exists():
        return
    _unmount_under(root)
    left = _mounts_under(root)
    if left:
        raise RuntimeError(f"still mounted below {root}, not deleting: {left}")
    shutil.rmtree(root)


def _shim_sockets(root: Path) -> list[Path]:
    """The containerd shims' sockets of the containers under `root`: /run/containerd/s/<sha256 of
    "<containerd address>/moby/<container id>">, left behind when a shim is killed."""
    found = []
    for address in root.glob("**/exec/containerd/containerd.sock"):
        containers = address.parents[2] / "data" / "containers"
        for container in containers.glob("*") if containers.is_dir() else []:
            digest = hashlib.sha256(f"{address}/moby/{container.name}".encode()).hexdigest()
            found.append(Path("/run/containerd/s") / digest)
    return found


def _reap(root: Path, cgroup_glob: str, timeout_s: float = 20.0) -> None:
    """Kill every process of the engines under `root` (dockerd, containerd, shims, the containers'
    processes), unmount and delete `root` and their cgroups. Safe on an already clean `root`."""
    groups = _cgroups(cgroup_glob)
    sockets = _shim_sockets(root) if root.exists() else []
    deadline = time.monotonic() + timeout_s
    while True:
        pids = [p for p in _pids_mentioning(f"{root}/") if _alive(p)] + sorted(_cgroup_pids(groups))
        if not pids:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes of {root} survive SIGKILL: {pids}")
        _kill(pids)
        time.sleep(0.02)
    for path in sockets:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    for engine in [root, *(p for p in root.glob("*") if p.is_dir())] if root.exists() else [root]:
        _bridge(bridge_name(engine), present=False)
    _remove_tree(root)
    left = _remove_cgroups(groups)
    if left:
        raise RuntimeError(f"cgroups left: {left}")


def _owner_line() -> str:
    found = _stat(os.getpid())
    assert found is not None
    return f"{os.getpid()} {found[1]}\n"


def _owner_alive(directory: Path) -> bool:
    """The process that made `directory` (its `owner` file: pid and start time) still runs. A
    directory without the file is being made right now (or its maker died at once: after an hour)."""
    try:
        pid_text, start_text = (directory / "owner").read_text().split()
    except FileNotFoundError:
        return time.time() - directory.stat().st_mtime < 3600
    except ValueError:
        return False
    found = _stat(int(pid_text))
    return found is not None and found[0] not in ("Z", "X") and found[1] == int(start_text)


def reap_stale(base: Path = BASE) -> list[Path]:
    """Remove what killed earlier runs left under `base` (their owner process is gone), and seeds
    unused for SEED_MAX_IDLE_S. Returns what was removed."""
    removed = []
    with _flock(base / "reap.lock", fcntl.LOCK_EX, 120):  # two new pools at once reap one at a time
        candidates = [d for d in base.glob("*") if d.is_dir() and d.name not in ("images", "bin")]
        candidates += [d for d in (base / "images").glob(".build-*") if d.is_dir()]
        for directory in candidates:
            if directory.exists() and not _owner_alive(directory):
                _reap(directory, f"{CGROUP_PREFIX}{directory.name}-*")
                removed.append(directory)
        for seed in (base / "images").glob("*"):
            if (
                seed.is_dir()
                and not seed.name.startswith(".")
                and time.time() - seed.stat().st_mtime > SEED_MAX_IDLE_S
            ):
                with _flock(seed.with_suffix(".lock"), fcntl.LOCK_EX, 0) as got:
                    if got and seed.is_dir() and time.time() - seed.stat().st_mtime > SEED_MAX_IDLE_S:
                        shutil.rmtree(seed)
                        removed.append(seed)
    return removed


@contextlib.contextmanager
def _flock(path: Path, kind: int, timeout_s: float) -> Iterator[bool]:
    """`kind` lock on `path` within `timeout_s` (0: one try); yields whether it was taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        deadline = time.monotonic() + timeout_s
        got = False
        while not got:
            try:
                fcntl.flock(handle, kind | fcntl.LOCK_NB)
                got = True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
        if not got and timeout_s:
            raise TimeoutError(f"{path} stayed locked for {timeout_s}s")
        try:
            yield got
        finally:
            if got:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _wait(
    check: Callable[[], bool],
    timeout_s: float,
    what: str,
    abort: Callable[[], str | None] = lambda: None,
    interval_s: float = 0.02,
) -> float:
    """Poll `check` until true; fail at the deadline, or at once when `abort` says why. Returns the
    time it took."""
    started = time.monotonic()
    while not check():
        reason = abort()
        if reason:
            raise RuntimeError(f"gave up waiting for {what}: {reason}")
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)
    return time.monotonic() - started


def _ping(path: Path, timeout_s: float = 1.0) -> bool:
    """The engine at unix socket `path` answers GET /_ping with 200 OK."""
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(timeout_s)
            sock.connect(str(path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
    except OSError:
        return False
    return (
        answer.startswith(b"HTTP/1.") and b" 200 " in answer.split(b"\r\n", 1)[0] and answer.endswith(b"OK")
    )


# --- one engine ------------------------------------------------------------------------------------


class Engine:
    """One simulated machine's Docker Engine. Made by `Engines.start`."""

    def __init__(
        self, root: Path, cgroup_parent: str, client_timeout_s: int = 30, binary: Path | None = None
    ) -> None:
        self.name = root.name
        self.binary = binary or dockerd_binary()
        self.root = root
        self.socket = root / "docker.sock"
        self.url = f"unix://{self.socket}"
        """`unix:///...sock`: the Docker SDK's base_url, the supervisor's `--docker-url`."""
        self.data_root = root / "data"
        self.exec_root = root / "exec"
        self.pidfile = root / "dockerd.pid"
        self.log = root / "dockerd.log"
        self.cgroup_parent = cgroup_parent
        self.client_timeout_s = client_timeout_s
        self.api_version: str | None = None
        self.frozen = False
        self.removed = False
        self.costs: dict[str, float] = {}
        """Seconds each step took the last time (start, ready, stop, restart, remove)."""
        self._process: subprocess.Popen[bytes] | None = None
        self._client: docker.DockerClient | None = None
        self._started_at = 0.0

    def __repr__(self) -> str:
        return f"<Engine {self.name} {self.url} pid={self.pid}>"

    @property
    def pid(self) -> int | None:
        """dockerd's pid while it runs."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def containerd_pid(self) -> int | None:
        try:
            pid = int((self.exec_root / "containerd" / "containerd.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    @property
    def client(self) -> docker.DockerClient:
        """A client of this engine (made once; the pool's timeout)."""
        if self._client is None:
            self._client = self.new_client(self.client_timeout_s)
        return self._client

    def new_client(self, timeout_s: int = 30) -> docker.DockerClient:
        """A client of its own (close it); no request is made, so it can be made while frozen."""
        return docker.DockerClient(base_url=self.url, timeout=timeout_s, version=self.api_version or "auto")

    # lifecycle

    def _command(self) -> list[str]:
        return [
            str(self.binary),
            "--config-file",
            str(self.root / "daemon.json"),
            "--host",
            self.url,
            "--data-root",
            str(self.data_root),
            "--exec-root",
            str(self.exec_root),
            "--pidfile",
            str(self.pidfile),
            f"--cgroup-parent={self.cgroup_parent}",
            "--label",
            f"io.ceres-supervisor.test.machine={self.name}",
            f"--bridge={bridge_name(self.root)}",
            *DOCKERD_FLAGS,
        ]

    def _launch(self) -> None:
        """Start dockerd, without waiting for it."""
        if self.removed:
            raise RuntimeError(f"{self.name} was removed")
        assert not self.running, f"{self.name}: dockerd runs already"
        self.root.mkdir(parents=True, exist_ok=True)
        _bridge(bridge_name(self.root), present=True)
        config = {"deprecated-key-path": str(self.root / "key.json"), "live-restore": False}
        (self.root / "daemon.json").write_text(json.dumps(config))
        self.socket.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")} | {"PATH": PATH}
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.frozen = False
        self._started_at = time.monotonic()

    def _why_not(self) -> str | None:
        process = self._process
        if process is None or process.poll() is None:
            return None
        return f"dockerd exited with {process.returncode}; its log ends:\n{self.tail()}"

    def _wait_ready(self, timeout_s: float) -> None:
        _wait(lambda: _ping(self.socket), timeout_s, f"{self.name}'s dockerd to answer", self._why_not)
        if self.api_version is None:
            client = self.new_client(10)
            try:
                self.api_version = str(client.api.api_version)
            finally:
                client.close()
        self.costs["ready"] = time.monotonic() - self._started_at

    def start(self, timeout_s: float = 30) -> None:
        """Start dockerd on its data root (again) and wait until it answers."""
        self._launch()
        self._wait_ready(timeout_s)

    def freeze(self) -> None:
        """SIGSTOP dockerd only: its API hangs (connections are accepted, nothing answers); its
        containerd, shims and containers run on."""
        pid = self.pid
        assert pid is not None, f"{self.name}: dockerd is not running"
        os.kill(pid, signal.SIGSTOP)
        _wait(lambda: (_stat(pid) or ("",))[0] == "T", 5, f"{self.name}'s dockerd stopped")
        self.frozen = True

    def thaw(self) -> None:
        """SIGCONT dockerd: what waited on its API is answered."""
        pid = self.pid
        if pid is not None:
            os.kill(pid, signal.SIGCONT)
            _wait(lambda: (_stat(pid) or ("",))[0] != "T", 5, f"{self.name}'s dockerd continued")
        self.frozen = False

    def stop(self, timeout_s: float = 90) -> None:
        """Stop dockerd as `systemctl stop docker` does (a package upgrade): SIGTERM, and SIGKILL
        after `timeout_s` (systemd's default 90 s). live-restore is off, so dockerd stops its
        containers first (their stop signal, SIGKILL after their stop timeout, 10 s by default),
        then its containerd. Data is kept: `start()` brings it back on the same data root."""
        started = time.monotonic()
        process = self._process
        if self.frozen:
            self.thaw()
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        containerd = self.containerd_pid()
        if containerd is not None:
            with contextlib.suppress(TimeoutError):
                _wait(lambda: not _alive(containerd), 10, f"{self.name}'s containerd to exit")
            _kill([containerd] if _alive(containerd) else [])
        self._close_client()
        self.costs["stop"] = time.monotonic() - started

    def restart(self, timeout_s: float = 90) -> None:
        """`stop()` then `start()`: its containers die (exited, not restarted unless their restart
        policy says so); returns once the engine answers again."""
        started = time.monotonic()
        self.stop(timeout_s)
        self.start(timeout_s)
        self.costs["restart"] = time.monotonic() - started

    def remove(self) -> None:
        """Remove everything: containers, dockerd, containerd, mounts, cgroups and the directory.

        The containers are removed through the API (so their shims exit cleanly), then dockerd and
        containerd are killed rather than stopped: a graceful stop costs a second (dockerd waits
        that long for its containerd), and nothing of them is kept."""
        started = time.monotonic()
        if self.frozen:
            self.thaw()
        if self.running:
            client = self.new_client(10)
            try:
                for container in client.containers.list(all=True, ignore_removed=True):
                    with contextlib.suppress(docker.errors.NotFound):
                        container.remove(force=True)
            except (docker.errors.DockerException, requests.RequestException):
                pass  # what is left is killed below
            finally:
                client.close()
        self._close_client()
        self.removed = True
        _reap(self.root, self.cgroup_parent.lstrip("/"))
        if self._process is not None:  # reap our child, killed by _reap if stop() could not
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(5)
        self.costs["remove"] = time.monotonic() - started

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def tail(self, lines: int = 20) -> str:
        """The end of dockerd's log (containerd's too: dockerd writes it into its own)."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# --- the pool --------------------------------------------------------------------------------------


class Engines:
    """The engines of one test process (session-scoped); see the module's docstring."""

    def __init__(
        self,
        main: docker.DockerClient,
        versions: Sequence[str] = ("1.2.2",),
        base: Path = BASE,
        client_timeout_s: int = 30,
    ) -> None:
        self.main = main
        """The main engine: the stand-in images come from it (read only)."""
        self.versions = list(versions)
        self.base = base
        self.client_timeout_s = client_timeout_s
        self.run = f"{SESSION}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.root = base / self.run
        self.engines: list[Engine] = []
        self.costs: dict[str, float] = {}
        """Seconds: reap (stale runs), seed (built, or found), and per start: clone, ready, verify."""
        self._count = 0
        self.closed = False
        self._lock = threading.Lock()
        started = time.monotonic()
        base.mkdir(parents=True, exist_ok=True)
        self.binary = dockerd_binary(base)
        reap_stale(base)
        self.costs["reap"] = time.monotonic() - started
        self.root.mkdir()
        (self.root / "owner").write_text(_owner_line())
        atexit.register(self.close)

    def __enter__(self) -> Engines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, n: int = 1, versions: Sequence[str] | None = None, timeout_s: float = 60) -> list[Engine]:
        """`n` new engines, started together, each with the stand-in images of `versions` (the
        pool's by default); returns once each answers."""
        if self.closed:
            raise RuntimeError(f"the pool {self.root} is closed")
        refs = image_refs(self.versions if versions is None else versions)
        made = []
        with self._lock:
            for _ in range(n):
                name = f"m{self._count}"
                self._count += 1
                made.append(
                    Engine(
                        self.root / name,
                        f"/{CGROUP_PREFIX}{self.run}-{name}",
                        self.client_timeout_s,
                        self.binary,
                    )
                )
            self.engines += made
        for _attempt in range(3):
            began = time.monotonic()
            seed, ids = self._seed(refs)
            self.costs["seed"] = time.monotonic() - began
            began = time.monotonic()
            with _flock(seed.with_suffix(".lock"), fcntl.LOCK_SH, 60):
                if not seed.is_dir():
                    continue  # removed meanwhile by another pool (unused for a day): made again
                os.utime(seed)
                for engine in made:
                    engine.data_root.mkdir(parents=True)
                clones = [
                    subprocess.Popen(["cp", "-a", "--link", str(seed / "overlay2"), str(e.data_root)])
                    for e in made
                ]
                clones += [
                    subprocess.Popen(["cp", "-a", str(seed / "image"), str(e.data_root)]) for e in made
                ]
                failed = [c.args for c in clones if c.wait() != 0]
                if failed:
                    raise RuntimeError(f"copying the seed failed: {failed}")
            self.costs["clone"] = time.monotonic() - began
            break
        began = time.monotonic()
        for engine in made:
            engine._launch()
        for engine in made:
            engine._wait_ready(timeout_s)
        self.costs["ready"] = time.monotonic() - began
        began = time.monotonic()
        for engine in made:
            if self._images(engine.client, refs) != ids:  # the seed did not take: load them the slow way
                self._load(engine.client, refs)
                self.costs["fallback load"] = time.monotonic() - began
                if self._images(engine.client, refs) != ids:
                    raise RuntimeError(f"{engine.name}: the images {refs} are not those of the main engine")
        self.costs["verify"] = time.monotonic() - began
        return made

    def load(self, engine: Engine, versions: Sequence[str]) -> None:
        """The stand-in images of `versions` into a running engine (`docker save` | `docker load`),
        as an operator brings a missing image to a machine."""
        self._load(engine.client, image_refs(versions))

    def remove(self, *engines: Engine) -> None:
        """Remove these engines (in parallel) and forget them."""
        with ThreadPoolExecutor(max(1, len(engines))) as pool:
            errors = [f.exception() for f in [pool.submit(e.remove) for e in engines]]
        with self._lock:
            self.engines = [e for e in self.engines if e not in engines]
        for error in errors:
            if error is not None:
                raise error

    def close(self) -> None:
        """Remove every engine and this run's directory. Idempotent."""
        atexit.unregister(self.close)
        self.closed = True
        try:
            if self.engines:
                self.remove(*self.engines)
        finally:
            _reap(self.root, f"{CGROUP_PREFIX}{self.run}-*")

    # images

    @staticmethod
    def _images(client: docker.DockerClient, refs: Sequence[str]) -> list[str | None]:
        ids: list[str | None] = []
        for ref in refs:
            try:
                ids.append(client.images.get(ref).id)
            except docker.errors.ImageNotFound:
                ids.append(None)
        return ids

    def _load(self, client: docker.DockerClient, refs: Sequence[str]) -> None:
        """`docker save refs` on the main engine streamed into `docker load` on `client`'s."""
        api = self.main.api
        with api.get(
            f"{api.base_url}/v{api.api_version}/images/get",
            params={"names": list(refs)},
            stream=True,
            timeout=120,
        ) as saved:
            saved.raise_for_status()
            load: Callable[[Iterator[bytes]], Iterator[object]] = (
                client.api.load_image
            )  # untyped in the stubs
            for line in load(saved.iter_content(1 << 20)):
                if isinstance(line, dict) and line.get("error"):
                    raise RuntimeError(f"docker load: {line['error']}")

    def _seed(self, refs: Sequence[str]) -> tuple[Path, list[str | None]]:
        """The cached seed holding `refs` (built when missing) and the images' IDs."""
        ids = self._images(self.main, refs)
        missing = [r for r, i in zip(refs, ids, strict=True) if i is None]
        if missing:
            raise RuntimeError(f"not in the main engine: {missing} (testkit/emulator.py builds them)")
        key = hashlib.sha256(json.dumps(list(zip(refs, ids, strict=True))).encode()).hexdigest()[:16]
        seeds = self.base / "images"
        seed = seeds / key
        if seed.is_dir():
            return seed, ids
        with _flock(seed.with_suffix(".lock"), fcntl.LOCK_EX, 300):
            if seed.is_dir():  # another process built it meanwhile
                return seed, ids
            build = seeds / f".build-{key}-{os.getpid()}"
            build.mkdir(parents=True)
            (build / "owner").write_text(_owner_line())
            engine = Engine(build / "seed", f"/{CGROUP_PREFIX}{build.name}-seed", binary=self.binary)
            try:
                engine.start()
                self._load(engine.client, refs)
                loaded = self._images(engine.client, refs)
                if loaded != ids:
                    raise RuntimeError(f"the main engine's images changed while being saved: {refs}")
                engine.stop()
                _unmount_under(build)
                kept = engine.root / "kept"
                kept.mkdir()
                for part in ("image", "overlay2"):
                    (engine.data_root / part).rename(kept / part)
                kept.rename(seed)
            finally:
                engine.stop()
                _reap(build, f"{CGROUP_PREFIX}{build.name}-*")
        return seed, ids
