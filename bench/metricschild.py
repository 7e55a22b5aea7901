"""One measurement of the metrics library, in this fresh process (run by metricslib.py).

    .venv/bin/python bench/metricschild.py bare|daemon

`bare`: only the project's model and planner are imported before measuring; `daemon`: aiohttp and
the Docker client too, as in the daemon, so stdlib modules they share with prometheus_client are
already counted. Prints one JSON line: VmRSS (MiB) before and after `import prometheus_client`,
after building `Metrics(...)` over a healthy plan of 1 meta + 3 CeresDB nodes, after CALLS
`exposition()` calls, and their CPU time.
"""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from ceres_supervisor.decisions import planning
from ceres_supervisor.decisions.backoff import Policy
from ceres_supervisor.desired import containers as desired
from ceres_supervisor.desired import loading
from ceres_supervisor.model.observed import (
    LeaseView,
    MetaLeader,
    MetaMemberProbe,
    Observation,
    ObservedContainer,
    ProbeResult,
    ShardLock,
)
from ceres_supervisor.model.spec import SupervisorSection
from ceres_supervisor.surfaces.snapshot import Coordination, ReloadResult, Snapshot

CALLS = 1000
NOW = 1000.0
WALL = datetime(2026, 11, 28, tzinfo=UTC)
CLUSTER = """
[cluster]
state_dir = "/var/lib/ceres-supervisor"

[[meta.nodes]]
name = "meta0"
host = "127.0.0.1"
""" + "".join(
    f"""
[[ceresdb.nodes]]
name = "db{i}"
host = "127.0.0.1"
grpc_port = {8831 + i}
http_port = {5440 + i}
mysql_port = {3307 + i}
"""
    for i in range(3)
)


def healthy_snapshot(directory: Path) -> Snapshot:
    """1 meta + 3 CeresDB nodes running for a while, probes ok, every shard lock held."""
    path = directory / "metricslib-cluster.toml"
    path.write_text(CLUSTER)
    cluster = desired.build(loading.load(path).spec, lambda _ref: "", is_local=lambda _host: True)
    containers = {
        n.name: ObservedContainer(
            id=f"id-{n.name}",
            name=f"ceres-x-{n.name}",
            node=n.name,
            role=n.role,
            spec_hash=n.spec_hash,
            state="running",
            image="img",
            started_at=datetime(2026, 11, 27, tzinfo=UTC),
        )
        for n in cluster.nodes
    }
    probes = {
        name: ProbeResult(True, "GET / 200", NOW, WALL, 0.001, c.run_key) for name, c in containers.items()
    }
    assigned = {n.endpoint: (i, i + 3) for i, n in enumerate(cluster.ceresdb)}
    locks = {shard: ShardLock(endpoint, 7) for endpoint, shards in assigned.items() for shard in shards}
    alive = ProbeResult(True, "GET /api/v1/healthCheck 200", NOW, WALL)
    observation = Observation(
        at=NOW,
        wall=WALL,
        containers=containers,
        orphans=(),
        engine_error=None,
        probes=probes,
        meta={m.name: MetaMemberProbe(alive, True) for m in cluster.meta},
        leader=MetaLeader(NOW, cluster.meta[0].name, True, ""),
        leases=LeaseView(NOW, WALL, assigned, locks),
        busy={},
    )
    records = {
        name: planning.NodeRecord(run_key=c.run_key, healthy_since=NOW - 300, last_probe_at=NOW - 1)
        for name, c in containers.items()
    }
    plan = planning.plan(cluster, observation, records, NOW, lambda: 0.0, Policy.of(SupervisorSection()))
    return Snapshot(
        1,
        NOW,
        cluster,
        ReloadResult(True, None, None),
        5.0,
        "127.0.0.1",
        observation,
        plan,
        records,
        coordination=Coordination(True, "ok", None, False),
    )


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main(mode: str) -> None:
    if mode == "daemon":
        for module in ("aiohttp", "docker"):
            importlib.import_module(module)
    with tempfile.TemporaryDirectory() as directory:
        snapshot = healthy_snapshot(Path(directory))
    states = {str(v.state) for v in snapshot.plan.views.values()} if snapshot.plan else set()
    assert states == {"healthy"}, states
    assert "prometheus_client" not in sys.modules, "imported before it is measured"
    before = rss_mib()
    importlib.import_module("prometheus_client")
    imported = rss_mib()
    metrics = importlib.import_module("ceres_supervisor.surfaces.metrics").Metrics(lambda: snapshot)
    metrics.count_restart("db0", "died")
    built = rss_mib()
    started = time.process_time()
    for _ in range(CALLS):
        body, _type = metrics.exposition(None)
    cpu = time.process_time() - started
    print(
        json.dumps(
            {
                "before": before,
                "imported": imported,
                "built": built,
                "after": rss_mib(),
                "cpu_s": cpu,
                "bytes": len(body),
                "version": metadata.version("prometheus_client"),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bare")
