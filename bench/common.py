"""Shared by the benchmarks: a supervisor subprocess on a stand-in cluster, timing, tables, results.

Benchmarks are not tests: they print tables and never assert targets. Each script prints every
table as it will stand in bench/RESULTS.md (heading: the commit, date and machine; under it: the
supervisor settings changed from the defaults) and saves them in bench/.results/<script>.json;
bench/report.py writes RESULTS.md from those. Every container a benchmark starts is labelled and
removed at the end, also when it fails or is interrupted (SIGINT, SIGTERM).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import report

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ceres_supervisor.adapters.dockerread import parse_time  # noqa: E402
from ceres_supervisor.desired import files, loading, rendering, secrets  # noqa: E402
from ceres_supervisor.model.spec import SupervisorSection  # noqa: E402
from testkit import emulator as build  # noqa: E402
from testkit.helpers import free_ports  # noqa: E402
from testkit.standins import cluster_toml  # noqa: E402

__all__ = ["build", "free_ports", "loading"]

BENCH_LABEL = "io.ceres-supervisor.bench"
STATE_ROOT = Path("/var/lib/ceres-supervisor-bench")
SUPERVISOR = ROOT / ".venv" / "bin" / "ceres-supervisor"


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # so that every `finally` below removes its containers


signal.signal(signal.SIGTERM, _exit_on_sigterm)


# --- what was measured, on what -----------------------------------------------------------------


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def machine() -> str:
    client = docker.from_env()
    engine = client.version().get("Version", "?")
    client.close()
    return (
        f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"Docker Engine {engine}"
    )


def changed_settings(settings: Mapping[str, object]) -> str:
    """`probe_interval=1s, backoff_reset=10s`: the [supervisor] keys whose value differs from the
    defaults of SupervisorSection, as written in the file. `listen` is only where the API is."""
    defaults = SupervisorSection()
    parsed = SupervisorSection.model_validate({**settings, "listen": defaults.listen})
    changed = [
        f"{key}={value}"
        for key, value in settings.items()
        if key != "listen" and getattr(parsed, key) != getattr(defaults, key)
    ]
    return ", ".join(changed) or "none"


def ms(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


class Run:
    """One script's run: its tables, the targets it measured, and how long it took."""

    def __init__(self, script: str, argv: list[str]) -> None:
        self.started = time.monotonic()
        self.doc: dict[str, Any] = {
            "script": script,
            "command": " ".join([".venv/bin/python", f"bench/{script}.py", *argv]),
            "commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(git("status", "--porcelain")),
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "host": platform.node(),
            "machine": machine(),
            "tables": [],
            "targets": {},
            "figures": {},
        }

    def table(
        self, title: str, headers: list[str], rows: list[list[object]], settings: str, notes: str = ""
    ) -> None:
        table = {
            "title": title,
            "settings": settings,
            "headers": headers,
            "rows": [[str(cell) for cell in row] for row in rows],
            "notes": notes,
        }
        self.doc["tables"].append(table)
        print("\n" + report.table_markdown(self.doc, table), flush=True)

    def target(self, key: str, measured: str, met: bool | None, settings: str) -> None:
        assert key in {k for k, _name, _target in report.TARGETS}, key
        self.doc["targets"][key] = {"measured": measured, "met": met, "settings": settings}

    def figure(self, key: str, value: float) -> None:
        """A number another script may quote (see `figure`)."""
        self.doc["figures"][key] = value

    def save(self) -> None:
        self.doc["duration_s"] = round(time.monotonic() - self.started, 1)
        report.RESULTS_DIR.mkdir(exist_ok=True)
        path = report.RESULTS_DIR / f"{self.doc['script']}.json"
        path.write_text(json.dumps(self.doc, indent=1) + "\n")
        print(
            f"{self.doc['script']}.py took {report.duration(self.doc['duration_s'])}; saved {path}",
            flush=True,
        )


def figure(script: str, key: str) -> float | None:
    """A number saved by another script of this `make bench` run, if it ran."""
    path = report.RESULTS_DIR / f"{script}.json"
    return json.loads(path.read_text())["figures"].get(key) if path.exists() else None


# --- waiting and HTTP ---------------------------------------------------------------------------


def http_get(url: str, timeout_s: float = 1.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def http_post(url: str, body: dict[str, object], timeout_s: float = 10.0) -> tuple[int, bytes]:
    """POST a JSON body; (status, answer); (0, the error) when nothing answered."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError as err:
        return 0, str(err).encode()


def answers(url: str) -> bool:
    """`GET url` returns 200 (a refused or reset connection is a no)."""
    try:
        return http_get(url, 0.2)[0] == 200
    except OSError:
        return False


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.02) -> float:
    """Poll until true; returns the time.time() at which it first held. Raises with what it waited for."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return time.time()
        except (OSError, ValueError):
            pass
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")


def epoch(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 time from Docker or the supervisor's API."""
    parsed = parse_time(text)
    assert parsed is not None, text
    return parsed.timestamp()


# --- processes ----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of another process (getrusage only sees our own and our children's)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Idle:
    cpu_s: float
    window_s: float
    rss_max_mib: float

    @property
    def percent(self) -> float:
        return self.cpu_s / self.window_s * 100


def measure_idle(pids: list[int], seconds: float) -> list[Idle]:
    """CPU seconds and the largest RSS of each process over the same `seconds` (RSS read every 1 s)."""
    cpu0, t0 = [cpu_seconds(p) for p in pids], time.monotonic()
    rss = [[rss_mib(p)] for p in pids]
    while time.monotonic() - t0 < seconds:
        time.sleep(1)
        for samples, pid in zip(rss, pids, strict=True):
            samples.append(rss_mib(pid))
    window = time.monotonic() - t0
    return [Idle(cpu_seconds(p) - c, window, max(r)) for p, c, r in zip(pids, cpu0, rss, strict=True)]


# --- the supervisor under test ------------------------------------------------------------------


@dataclass
class Daemon:
    """A `ceres-supervisor run` subprocess on a generated cluster file."""

    process: subprocess.Popen[bytes]
    config: Path
    url: str
    name: str
    state: Path

    def get_json(self, path: str) -> Any:
        _code, body = http_get(f"{self.url}{path}", 5)
        return json.loads(body)

    def status(self) -> dict[str, Any]:
        return self.get_json("/v1/status")  # type: ignore[no-any-return]

    def events(self) -> list[dict[str, Any]]:
        return self.get_json("/v1/events?limit=1000")  # type: ignore[no-any-return]

    def first_event(self, node: str, type_: str, since: float) -> dict[str, Any] | None:
        """The first `type_` event of `node` at or after `since` (epoch seconds; the API has ms)."""
        return next(
            (
                e
                for e in self.events()
                if e["node"] == node and e["type"] == type_ and epoch(e["at"]) >= since - 0.001
            ),
            None,
        )

    def ready(self) -> bool:
        return http_get(f"{self.url}/readyz", 0.5)[0] == 200

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def supervisor_table(settings: Mapping[str, object]) -> str:
    return "[supervisor]\n" + "".join(
        f'{k} = "{v}"\n' if isinstance(v, str) else f"{k} = {v}\n" for k, v in settings.items()
    )


def cluster_text(
    meta: int, db: int, supervisor: Mapping[str, object] | None = None, version: str = "1.2.2"
) -> tuple[str, str, Path]:
    """(the file, the cluster name, its state directory) of a new stand-in cluster on free ports."""
    name = f"b{uuid.uuid4().hex[:8]}"
    state = STATE_ROOT / name
    settings = {"listen": f"127.0.0.1:{free_ports(1)[0]}", **(supervisor or {})}
    text = cluster_toml(
        meta=meta,
        db=db,
        version=version,
        cluster_name=name,
        state_dir=str(state),
        extra=supervisor_table(settings),
    )
    return text, name, state


def start_daemon(
    config: Path,
    name: str,
    state: Path,
    log: Path,
    host: str | None = None,
    listen: str | None = None,
    docker_url: str | None = None,
    store: str | None = None,
    log_level: str = "warning",
) -> Daemon:
    args = [str(SUPERVISOR), "run", "-c", str(config), "--log-level", log_level]
    args += ["--host", host] if host else []
    args += ["--listen", listen] if listen else []
    args += ["--docker-url", docker_url] if docker_url else []
    args += ["--store", store] if store else []
    with log.open("ab") as handle:
        process = subprocess.Popen(args, stdout=handle, stderr=handle)
    address = listen or config.read_text().split('listen = "', 1)[1].split('"', 1)[0]
    return Daemon(process, config, f"http://{address}", name, state)


@contextmanager
def daemon(meta: int, db: int, supervisor: Mapping[str, object] | None = None) -> Iterator[Daemon]:
    """A supervisor on a new stand-in cluster; its containers and state are removed at the end."""
    build.main(["1.2.2"])
    text, name, state = cluster_text(meta, db, supervisor)
    state.mkdir(parents=True, exist_ok=True)
    config = state / "cluster.toml"
    config.write_text(text)
    d = start_daemon(config, name, state, state / "supervisor.log")
    try:
        yield d
    finally:
        d.stop()
        cleanup(name, state)


def cleanup(name: str, state: Path) -> None:
    """Remove the cluster's containers, the benchmark's own (Docker-restarted peers) and its state."""
    remove_containers(f"io.ceres-supervisor.cluster={name}")
    remove_containers(f"{BENCH_LABEL}={name}")
    shutil.rmtree(state, ignore_errors=True)


def remove_containers(label: str) -> None:
    client = docker.from_env()
    for container in client.containers.list(all=True, filters={"label": label}):
        container.remove(force=True)
    client.close()


def main_pid(client: docker.DockerClient, container_name: str) -> int:
    """The host PID of the container's main process; fails when it is not running."""
    pid = int(client.containers.get(container_name).attrs["State"]["Pid"])
    if pid <= 0:  # os.kill(0, ...) would hit our own process group
        raise ProcessLookupError(f"{container_name} is not running")
    return pid


def start_peer(d: Daemon, client: docker.DockerClient, name: str = "peer") -> tuple[str, str]:
    """The cluster's CeresDB stand-in image, configured like its nodes (on 127.0.0.9), under Docker's
    own `--restart=always`: (container name, its `GET /` URL)."""
    grpc, http, mysql = free_ports(3)
    text = d.config.read_text() + (
        f'\n[[ceresdb.nodes]]\nname = "{name}"\nhost = "127.0.0.9"\ngrpc_port = {grpc}\nhttp_port = {http}\n'
        f"mysql_port = {mysql}\n"
    )
    path = d.state / f"{name}.toml"
    path.write_text(text)
    spec = loading.load(path).spec
    node = next(n for n in rendering.render(spec) if n.name == name)
    files.write_node(d.state / name, node, secrets.resolve)
    (d.state / f"{name}-data").mkdir(exist_ok=True)
    container = f"bench-{name}-{d.name}"
    client.containers.run(
        spec.ceresdb.image,
        detach=True,
        name=container,
        network_mode="host",
        environment=node.env,
        restart_policy={"Name": "always"},
        labels={BENCH_LABEL: d.name},
        volumes={
            str(d.state / name / node.config_name): {"bind": node.config_mount, "mode": "ro"},
            str(d.state / f"{name}-data"): {"bind": node.data_mount, "mode": "rw"},
        },
    )
    return container, f"http://127.0.0.9:{http}/"


@dataclass
class StartEvents:
    """Docker's `start` events (dockerd's own timeNano), by container name, read in a thread."""

    client: docker.DockerClient
    starts: dict[str, list[int]] = field(default_factory=dict)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def __enter__(self) -> StartEvents:
        self.stream = self.client.events(decode=True, filters={"type": "container", "event": ["start"]})
        self.thread = threading.Thread(target=self._read, name="bench-start-events", daemon=True)
        self.thread.start()
        return self

    def _read(self) -> None:
        try:
            for event in self.stream:
                name = event.get("Actor", {}).get("Attributes", {}).get("name", "")
                with self.changed:
                    self.starts.setdefault(name, []).append(int(event["timeNano"]))
                    self.changed.notify_all()
        except Exception:  # the stream closed under us at the end
            return

    def count(self, name: str) -> int:
        with self.changed:
            return len(self.starts.get(name, []))

    def wait(self, name: str, index: int, timeout_s: float) -> int:
        """timeNano of the `index`-th start of `name` (0-based), waiting for it."""
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.starts.get(name, [])) > index, timeout_s):
                raise TimeoutError(f"no start event #{index + 1} for {name} within {timeout_s}s")
            return self.starts[name][index]

    def __exit__(self, *exc: object) -> None:
        self.stream.close()
