"""Shared by the benchmarks: a supervisor subprocess on a stand-in cluster, timing, tables.

Benchmarks are not tests: they print numbers (and append them to bench/RESULTS.md) and never
assert targets. Every container they start is labelled and removed at the end.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.emulator import build  # noqa: E402
from tests.helpers import free_ports  # noqa: E402
from tests.standins import cluster_toml  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
BENCH_LABEL = "io.ceres-supervisor.bench"
STATE_ROOT = Path("/var/lib/ceres-supervisor-bench")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "min": min(values), "median": statistics.median(values),
            "p95": percentile(values, 95), "p99": percentile(values, 99), "max": max(values)}


def http_get(url: str, timeout_s: float = 1.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


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


def machine() -> str:
    client = docker.from_env()
    engine = client.version().get("Version", "?")
    client.close()
    return (f"{platform.node()}: {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, Docker Engine {engine}")


def record(title: str, command: str, table: str, notes: str = "") -> None:
    """Print the table and append it, with the command, machine and date, to bench/RESULTS.md."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = f"\n### {title}\n\n`{command}` on {stamp}, {machine()}\n\n{table}\n"
    if notes:
        block += f"\n{notes}\n"
    print(block)
    with RESULTS.open("a") as handle:
        handle.write(block)


def markdown(headers: list[str], rows: list[list[object]]) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Daemon:
    """A `ceres-supervisor run` subprocess on a generated cluster file."""

    process: subprocess.Popen[bytes]
    config: Path
    url: str
    name: str
    state: Path

    def status(self) -> dict[str, Any]:
        _code, body = http_get(f"{self.url}/v1/status")
        return json.loads(body)

    def events(self) -> list[dict[str, Any]]:
        _code, body = http_get(f"{self.url}/v1/events?limit=1000")
        return json.loads(body)

    def ready(self) -> bool:
        return http_get(f"{self.url}/readyz", 0.5)[0] == 200

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


def cluster_text(meta: int, db: int, supervisor: dict[str, str] | None = None) -> tuple[str, str, Path]:
    name = f"b{uuid.uuid4().hex[:8]}"
    state = STATE_ROOT / name
    settings = {"listen": f"127.0.0.1:{free_ports(1)[0]}", **(supervisor or {})}
    table = "[supervisor]\n" + "".join(f'{k} = "{v}"\n' if isinstance(v, str) else f"{k} = {v}\n"
                                       for k, v in settings.items())
    return cluster_toml(meta=meta, db=db, cluster_name=name, state_dir=str(state), extra=table), name, state


@contextmanager
def daemon(meta: int, db: int, supervisor: dict[str, str] | None = None) -> Iterator[Daemon]:
    build.main(["1.2.2"])
    text, name, state = cluster_text(meta, db, supervisor)
    state.mkdir(parents=True, exist_ok=True)
    config = state / "cluster.toml"
    config.write_text(text)
    listen = text.split('listen = "', 1)[1].split('"', 1)[0]
    log = (state / "supervisor.log").open("wb")
    process = subprocess.Popen([str(ROOT / ".venv" / "bin" / "ceres-supervisor"), "run", "-c", str(config),
                                "--log-level", "warning"], stdout=log, stderr=log)
    d = Daemon(process, config, f"http://{listen}", name, state)
    try:
        yield d
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        log.close()
        remove_containers(f"io.ceres-supervisor.cluster={name}")
        shutil.rmtree(state, ignore_errors=True)


def measure_idle(d: Daemon, seconds: float) -> tuple[float, float, float]:
    """(CPU seconds, window seconds, max RSS MiB) of the daemon over `seconds`."""
    cpu0, t0 = d.cpu_seconds(), time.monotonic()
    rss = []
    while time.monotonic() - t0 < seconds:
        time.sleep(1)
        rss.append(d.rss_mib())
    return d.cpu_seconds() - cpu0, time.monotonic() - t0, max(rss)


def remove_containers(label: str) -> None:
    client = docker.from_env()
    for container in client.containers.list(all=True, filters={"label": label}):
        container.remove(force=True)
    client.close()


def main_pid(container_name: str) -> int:
    client = docker.from_env()
    pid = int(client.containers.get(container_name).attrs["State"]["Pid"])
    client.close()
    return pid
