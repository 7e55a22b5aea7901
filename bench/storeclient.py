"""The etcd client, chosen by measuring: a maintained gRPC library vs the JSON gateway.

    .venv/bin/python bench/storeclient.py [REPS] [CALLS]        (default 3 repetitions, 1000 reads)

The gRPC side is aetcd, installed with its dependencies (grpcio, protobuf) into a temporary
virtualenv under /tmp that is removed at the end (never into .venv); the gateway side is the
project's `ceres_supervisor.adapters.etcd.Etcd` over aiohttp. Both talk to the real etcd inside one CeresMeta
stand-in (Debian's etcd 3.4, the client port on loopback), each in a fresh Python process
(bench/storechild.py), repetitions interleaved; the figures are medians.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import common
import docker

from testkit.standins import StandIns

CHILD = Path(__file__).resolve().parent / "storechild.py"
KINDS = (("grpc", "aetcd (gRPC)"), ("gateway", "ceres_supervisor.adapters.etcd (JSON gateway, aiohttp)"))


def grpc_venv(directory: Path) -> Path:
    """A throw-away virtualenv with aetcd; its python."""
    subprocess.run([sys.executable, "-m", "venv", str(directory)], check=True)
    pip = subprocess.run(
        [str(directory / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "aetcd", "aiohttp"],
        check=False,
        capture_output=True,
        text=True,
    )
    if pip.returncode != 0:
        raise RuntimeError(f"pip install aetcd failed: {pip.stderr}")
    return directory / "bin" / "python"


def main(reps: int, calls: int) -> None:
    run = common.Run("storeclient", [str(reps), str(calls)])
    client = docker.from_env()
    common.build.main(["1.2.2"])
    text, _name, state = common.cluster_text(1, 1)
    state.mkdir(parents=True, exist_ok=True)
    runner = StandIns(client, state)
    samples: dict[str, list[dict[str, Any]]] = {kind: [] for kind, _label in KINDS}
    try:
        with tempfile.TemporaryDirectory(prefix="ceres-bench-grpc-", dir="/tmp") as venv:
            pythons = {"grpc": grpc_venv(Path(venv)), "gateway": Path(sys.executable)}
            spec = runner.load(text)
            runner.run(spec, "meta0")
            meta = spec.meta.nodes[0]
            common.wait_for(
                lambda: (
                    json.loads(common.http_get(f"http://{meta.host}:{meta.client_port}/health")[1]).get(
                        "health"
                    )
                    == "true"
                ),
                60,
                "etcd in the meta stand-in healthy",
                0.2,
            )
            for rep in range(reps):
                for kind, _label in KINDS if rep % 2 == 0 else KINDS[::-1]:
                    out = subprocess.run(
                        [str(pythons[kind]), str(CHILD), kind, meta.host, str(meta.client_port), str(calls)],
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    samples[kind].append(json.loads(out.stdout))
    finally:
        runner.cleanup()
        shutil.rmtree(state, ignore_errors=True)

    def rss(kind: str, key: str) -> float:
        return statistics.median(s["rss"][key] for s in samples[kind])

    def per_call(kind: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[kind]) / calls

    rows = [
        ["a fresh python (MiB)", *(f"{rss(k, 'python'):.1f}" for k, _l in KINDS)],
        [
            "+ `import aiohttp` (the daemon has it anyway)",
            *(f"{rss(k, 'aiohttp') - rss(k, 'python'):+.1f}" for k, _l in KINDS),
        ],
        [
            "+ import the client library",
            *(f"{rss(k, 'imported') - rss(k, 'aiohttp'):+.1f}" for k, _l in KINDS),
        ],
        [
            "+ create the client, write one key (connects)",
            *(f"{rss(k, 'client') - rss(k, 'imported'):+.1f}" for k, _l in KINDS),
        ],
        [f"+ {calls} reads of that key", *(f"{rss(k, 'reads') - rss(k, 'client'):+.1f}" for k, _l in KINDS)],
        [
            "**added to a daemon that has aiohttp** (import + client + reads)",
            *(f"**{rss(k, 'reads') - rss(k, 'aiohttp'):+.1f}**" for k, _l in KINDS),
        ],
        ["CPU per read, us", *(f"{per_call(k, 'cpu_s') * 1e6:.0f}" for k, _l in KINDS)],
        ["wall time per read, ms", *(f"{per_call(k, 'wall_s') * 1e3:.2f}" for k, _l in KINDS)],
    ]
    versions = ", ".join(f"{p} {v}" for kind, _l in KINDS for p, v in samples[kind][0]["versions"].items())
    grpc_added = rss("grpc", "reads") - rss("grpc", "aiohttp")
    gateway_added = rss("gateway", "reads") - rss("gateway", "aiohttp")
    idle = common.figure("steady", "idle_rss_mib")
    budget = (
        f"The daemon's idle RSS of this run, with the gateway client, is {idle:.1f} MiB (steady.py); with "
        f"the gRPC client instead it would be about {idle - gateway_added + grpc_added:.1f} MiB, against "
        "66.8 MiB (70 MB). "
        if idle
        else ""
    )
    run.table(
        f"Store client: a gRPC etcd library vs the JSON gateway (medians of {reps} fresh processes each)",
        ["RSS MiB and time", *(label for _k, label in KINDS)],
        rows,
        "none (no daemon: each client alone in a fresh process)",
        f"Versions: {versions}. The gRPC stack adds {grpc_added:.1f} MiB where the gateway client adds "
        f"{gateway_added:.1f} MiB; the idle target is 70 MB in all. {budget}An agent makes a few store "
        "calls a second at most (keep-alive every agent_ttl/3, a write per node change, one watch per prefix), "
        "so the time per read matters less than the memory.",
    )
    run.save()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3, int(sys.argv[2]) if len(sys.argv) > 2 else 1000)
