"""`/metrics` with the official Prometheus client: one registry per daemon, no global state.

The node-level series are collected from the last snapshot when Prometheus scrapes (nothing is
updated per cycle); the two histograms and the restarts counter are updated where things happen.
The standard process metrics (`process_resident_memory_bytes`, `process_cpu_seconds_total`,
`process_open_fds`, ...) come with the registry. The `reason` label of restarts is a kind (died,
unhealthy, lease_lost, planned, ...), never free text, so cardinality stays bounded. Text format
0.0.4, or OpenMetrics when the scraper asks for it.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Final, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from ceres_supervisor import __version__
from ceres_supervisor.decisions.planning import NodeState, Plan
from ceres_supervisor.desired.containers import DesiredCluster

PROBE_BUCKETS_S: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CYCLE_BUCKETS_S: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5)


class Snapshotlike(Protocol):
    @property
    def desired(self) -> DesiredCluster: ...
    @property
    def plan(self) -> Plan | None: ...
    @property
    def reload_ok(self) -> bool: ...
    @property
    def agents(self) -> dict[str, bool]: ...


class _FromSnapshot(Collector):
    """Gauges read from the daemon's last snapshot at scrape time."""

    def __init__(self, snapshot: Callable[[], Snapshotlike]) -> None:
        self.snapshot = snapshot

    def describe(self) -> Iterator[Metric]:
        return iter(())  # nothing to check at registration: the snapshot does not exist yet

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        states = GaugeMetricFamily(
            "ceres_supervisor_node_state",
            "1 for the state each node is in, 0 for the others.",
            labels=["node", "role", "state"],
        )
        held = GaugeMetricFamily(
            "ceres_supervisor_lease_held",
            "1 while a CeresDB node holds all its shard locks.",
            labels=["node"],
        )
        if snap.plan is not None:
            for node in snap.desired.nodes:
                view = snap.plan.views.get(node.name)
                for state in NodeState:
                    value = 1 if view is not None and view.state is state else 0
                    states.add_metric([node.name, node.role, str(state)], value)
                if node.role == "ceresdb" and node.is_local and view is not None and view.lease is not None:
                    held.add_metric([node.name], 1 if view.lease.held else 0)
        yield states
        yield held
        agents = GaugeMetricFamily(
            "ceres_supervisor_agent_up",
            "1 for each supervisor agent up in the store, 0 when down.",
            labels=["host"],
        )
        for host, up in sorted(snap.agents.items()):
            agents.add_metric([host], 1 if up else 0)
        yield agents
        reload = GaugeMetricFamily(
            "ceres_supervisor_reload_success", "1 if the last reload applied, 0 if it was refused."
        )
        reload.add_metric([], 1 if snap.reload_ok else 0)
        yield reload
        info = GaugeMetricFamily(
            "ceres_supervisor_info",
            "The supervisor's version (always 1).",
            labels=["version", "python", "docker_sdk"],
        )
        info.add_metric([__version__, platform.python_version(), metadata.version("docker")], 1)
        yield info


class Metrics:
    """The daemon's registry and the series it updates as things happen."""

    def __init__(self, snapshot: Callable[[], Snapshotlike]) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series: the counters are the daemon's own life
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self.registry.register(_FromSnapshot(snapshot))
        self.restarts = Counter(
            "ceres_supervisor_restarts",
            "Restarts by node and kind (a failure, or planned).",
            ["node", "reason"],
            registry=self.registry,
        )
        self.probe_duration = Histogram(
            "ceres_supervisor_probe_duration_seconds",
            "Duration of health and readiness probes.",
            buckets=PROBE_BUCKETS_S,
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "ceres_supervisor_reconcile_duration_seconds",
            "Duration of one reconcile cycle.",
            buckets=CYCLE_BUCKETS_S,
            registry=self.registry,
        )
        self.last_backup: Gauge | None = None
        """Registered at the first good backup: no series at all on an agent that never took one."""

    def backup_succeeded(self, cluster: str, host: str, at_unix: float) -> None:
        if self.last_backup is None:
            self.last_backup = Gauge(
                "ceres_supervisor_last_backup_success_timestamp_seconds",
                "Unix time of the last good backup of CeresMeta's etcd taken by this agent.",
                ["cluster", "host"],
                registry=self.registry,
            )
        self.last_backup.labels(cluster=cluster, host=host).set(at_unix)

    def count_restart(self, node: str, reason: str) -> None:
        self.restarts.labels(node=node, reason=reason).inc()

    def restarts_by_reason(self) -> dict[tuple[str, str], int]:
        """(node, reason) -> count, for tests and the status line."""
        counts: dict[tuple[str, str], int] = {}
        for metric in self.restarts.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    counts[(sample.labels["node"], sample.labels["reason"])] = int(sample.value)
        return counts

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The text Prometheus asked for (`Accept`), and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
