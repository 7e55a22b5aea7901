"""`/metrics` with the official Prometheus client: one registry per daemon, no global state.

Every `ceres_supervisor_*` series carries `cluster` (the file's `cluster.name`) and `host`: the
machine the series is about. That is the node's `host` for a node's series, the agent's for an
agent's, and this supervisor's own for what it reports about itself (its reload, its Docker
Engine, its view of the store) and about the cluster as it sees it (the meta leader, the slots,
the agents' files). Who reported a series is Prometheus's own `instance` label. Cardinality is
bounded by the file: nodes x states, hosts, meta members; restart reasons are kinds (died,
unhealthy, lease_lost, planned, ...), never free text.

The gauges are read from the daemon's last snapshot when Prometheus scrapes. Each node of this
agent is exported in the state its planner gave it (`unknown` while Docker cannot be observed);
a node of another machine is exported by every agent that can read the store while no live
agent publishes it (`unknown`: its machine or its supervisor is lost), so a lost machine's nodes
never vanish from the metrics. The counters and histograms count as things happen: restarts where
the daemon decides them, probe failures from each published snapshot (`published`). The standard
`process_*` metrics come with the registry. Text format 0.0.4, or OpenMetrics when asked for it.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from importlib import metadata
from typing import Any, Final, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from ceres_supervisor import __version__
from ceres_supervisor.decisions.planning import ClusterState, NodeState
from ceres_supervisor.surfaces import seams
from ceres_supervisor.surfaces.snapshot import ReloadResult

PROBE_BUCKETS_S: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CYCLE_BUCKETS_S: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Up to the Docker calls' own timeouts (10 s to list, 30 s for an action; a test holds them
together): a cycle that waited on a hung Engine lands in a bucket of its own."""
SUPERVISOR_LABELS: Final = ("cluster", "host")
NODE_LABELS: Final = ("cluster", "host", "node")


class Snapshotlike(seams.Snapshotlike, Protocol):
    @property
    def reload(self) -> ReloadResult: ...
    @property
    def cluster_state(self) -> str: ...


def _families() -> dict[str, GaugeMetricFamily]:
    def gauge(name: str, text: str, labels: tuple[str, ...] = SUPERVISOR_LABELS) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, text, labels=list(labels))

    return {
        "state": gauge(
            "ceres_supervisor_node_state",
            "1 for the state each node is in, 0 for the others (unknown: no supervisor can tell).",
            (*NODE_LABELS, "role", "state"),
        ),
        "cluster": gauge(
            "ceres_supervisor_cluster_state",
            "1 for the state of the whole cluster as this supervisor sees it, 0 for the others.",
            (*SUPERVISOR_LABELS, "state"),
        ),
        "lease": gauge(
            "ceres_supervisor_lease_held",
            "1 while a CeresDB node holds the locks of every shard meta assigns it, 0 when not.",
            NODE_LABELS,
        ),
        "exit": gauge(
            "ceres_supervisor_node_last_exit_code",
            "Exit code of the node's last exit that the supervisor did not cause.",
            NODE_LABELS,
        ),
        "failures": gauge(
            "ceres_supervisor_node_failures",
            "Failures counted toward the node's backoff and crashloop (0 again after backoff_reset healthy).",
            NODE_LABELS,
        ),
        "agent": gauge(
            "ceres_supervisor_agent_up",
            "1 for each host of the file whose supervisor is up in the coordination store, 0 when it "
            "is not (left, lost, or never started).",
        ),
        "docker": gauge(
            "ceres_supervisor_docker_up",
            "1 when the last reconcile cycle observed this machine's Docker Engine, 0 when it could not.",
        ),
        "store": gauge(
            "ceres_supervisor_coordination_up",
            "1 while the coordination store (CeresMeta's etcd) answers this supervisor, 0 when not.",
        ),
        "leader": gauge(
            "ceres_supervisor_meta_leader",
            "1 for the CeresMeta member that holds the leader key, 0 for the others (all 0: no leader).",
            NODE_LABELS,
        ),
        "slot": gauge(
            "ceres_supervisor_disruption_slot_held_seconds",
            "How long each disruption slot has been held, by the node it was taken for.",
            NODE_LABELS,
        ),
        "differ": gauge(
            "ceres_supervisor_spec_hashes_differ",
            "1 while the supervisors up in the store run different desired-state files (changes wait).",
        ),
        "reload": gauge(
            "ceres_supervisor_reload_success",
            "1 if the last reload applied (or none was asked), 0 if it was refused.",
        ),
        "reload_at": gauge(
            "ceres_supervisor_last_reload_timestamp_seconds",
            "Unix time of the last reload, applied or refused.",
        ),
    }


def _slot_age_s(since: object, now: datetime) -> float | None:
    if not isinstance(since, str):
        return None
    try:
        at = datetime.fromisoformat(since.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, (now - (at if at.tzinfo else at.replace(tzinfo=UTC))).total_seconds())


class _FromSnapshot(Collector):
    """Gauges read from the daemon's last snapshot at scrape time."""

    def __init__(self, snapshot: Callable[[], Snapshotlike]) -> None:
        self.snapshot = snapshot

    def describe(self) -> Iterator[Metric]:
        return iter(())  # nothing to check at registration: the snapshot does not exist yet

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        cluster, me = snap.desired.spec.cluster.name, snap.agent
        f = _families()
        reachable = seams.store_reachable(snap)
        doc = seams.cluster(snap) if reachable else None
        self._nodes(snap, doc, f)
        for host, up in seams.hosts_up(snap).items():
            f["agent"].add_metric([cluster, host], 1 if up else 0)
        f["docker"].add_metric([cluster, me], 1 if seams.engine_reachable(snap) else 0)
        f["store"].add_metric([cluster, me], 1 if reachable else 0)
        whole = str(doc["cluster"]["state"]) if doc is not None else snap.cluster_state
        for state in ClusterState:
            f["cluster"].add_metric([cluster, me, str(state)], 1 if whole == state else 0)
        observation = snap.observation
        if observation is not None and observation.leader is not None:
            for member in snap.desired.meta:
                is_leader = observation.leader.member == member.name
                f["leader"].add_metric([cluster, member.host, member.name], 1 if is_leader else 0)
        if reachable:
            now = datetime.now(UTC)
            for node, slot in sorted(snap.store.slots.items()):
                age = _slot_age_s(slot.get("since"), now)
                if age is not None:
                    f["slot"].add_metric([cluster, str(slot.get("host", "")), node], age)
            hashes = {rec.spec_hash for rec in snap.store.agents.values()} | {snap.desired.spec_hash}
            f["differ"].add_metric([cluster, me], 1 if len(hashes) > 1 else 0)
        reload = snap.reload
        f["reload"].add_metric([cluster, me], 1 if reload.ok else 0)
        if reload.at is not None:
            f["reload_at"].add_metric([cluster, me], reload.at.timestamp())
        yield from f.values()
        spec = InfoMetricFamily(
            "ceres_supervisor_spec",
            "The desired state this supervisor runs (its spec hash).",
            labels=list(SUPERVISOR_LABELS),
        )
        spec.add_metric([cluster, me], {"spec_hash": snap.desired.spec_hash})
        yield spec
        build = GaugeMetricFamily(
            "ceres_supervisor_build_info",
            "The supervisor's version, with its Python and Docker SDK (always 1).",
            labels=["cluster", "host", "version", "python", "docker_sdk"],
        )
        build.add_metric([cluster, me, __version__, platform.python_version(), metadata.version("docker")], 1)
        yield build

    @staticmethod
    def _nodes(snap: Snapshotlike, doc: dict[str, Any] | None, f: dict[str, GaugeMetricFamily]) -> None:
        cluster = snap.desired.spec.cluster.name
        plan = snap.plan
        engine_ok = seams.engine_reachable(snap)
        unknown = {
            str(n.get("name"))
            for n in (doc["nodes"] if doc is not None else [])
            if n.get("state") == NodeState.UNKNOWN and n.get("agent") != snap.agent
        }
        for node in snap.desired.nodes:
            labels = [cluster, node.host, node.name]
            if node.is_local:
                view = plan.views.get(node.name) if plan else None
                if view is None:
                    continue
                state = view.state if engine_ok else NodeState.UNKNOWN
                record = snap.records.get(node.name)
                if record is not None:
                    f["failures"].add_metric(labels, record.failures)
                    if record.last_exit is not None and record.last_exit.code is not None:
                        f["exit"].add_metric(labels, record.last_exit.code)
                if node.role == "ceresdb" and view.lease is not None and view.lease.held is not None:
                    f["lease"].add_metric(labels, 1 if view.lease.held else 0)
            elif node.name in unknown:
                state = NodeState.UNKNOWN
            else:
                continue  # its own supervisor exports it
            for each in NodeState:
                f["state"].add_metric([*labels, node.role, str(each)], 1 if each is state else 0)


class _Bound:
    """A histogram with this supervisor's `cluster` and `host` labels, set at the first observation
    (the snapshot that names them exists by then), so callers just `observe(seconds)`."""

    def __init__(self, histogram: Histogram, labels: Callable[[], tuple[str, str]]) -> None:
        self.histogram = histogram
        self.labels = labels

    def observe(self, value: float) -> None:
        self.histogram.labels(*self.labels()).observe(value)


class Metrics:
    """The daemon's registry and the series it updates as things happen."""

    def __init__(self, snapshot: Callable[[], Snapshotlike]) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series: the counters are the daemon's own life
        self.snapshot = snapshot
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self.registry.register(_FromSnapshot(snapshot))
        self.restarts = Counter(
            "ceres_supervisor_restarts",
            "Restarts by node and kind (a failure, or planned).",
            [*NODE_LABELS, "reason"],
            registry=self.registry,
        )
        self.probe_failures = Counter(
            "ceres_supervisor_probe_failures",
            "Failed health probes of a node, as the supervisor counted them toward failure_threshold.",
            list(NODE_LABELS),
            registry=self.registry,
        )
        self.probe_duration = _Bound(
            Histogram(
                "ceres_supervisor_probe_duration_seconds",
                "Duration of health and readiness probes.",
                list(SUPERVISOR_LABELS),
                buckets=PROBE_BUCKETS_S,
                registry=self.registry,
            ),
            self._me,
        )
        self.reconcile_duration = _Bound(
            Histogram(
                "ceres_supervisor_reconcile_duration_seconds",
                "Duration of one reconcile cycle.",
                list(SUPERVISOR_LABELS),
                buckets=CYCLE_BUCKETS_S,
                registry=self.registry,
            ),
            self._me,
        )
        self._probe_failures: dict[str, int] = {}
        self.last_backup: Gauge | None = None
        """Registered at the first good backup: no series at all on an agent that never took one
        (which keeps the backup alert quiet while no backup is configured)."""

    def backup_succeeded(self, cluster: str, host: str, at_unix: float) -> None:
        if self.last_backup is None:
            self.last_backup = Gauge(
                "ceres_supervisor_last_backup_success_timestamp_seconds",
                "Unix time of the last good backup of CeresMeta's etcd taken by this agent.",
                ["cluster", "host"],
                registry=self.registry,
            )
        self.last_backup.labels(cluster=cluster, host=host).set(at_unix)

    def _me(self) -> tuple[str, str]:
        snap = self.snapshot()
        return snap.desired.spec.cluster.name, snap.agent

    def _node_labels(self, node: str) -> tuple[str, str, str]:
        snap = self.snapshot()
        known = snap.desired.node(node)
        return snap.desired.spec.cluster.name, known.host if known else snap.agent, node

    def count_restart(self, node: str, reason: str) -> None:
        self.restarts.labels(*self._node_labels(node), reason).inc()

    def published(self, snap: Snapshotlike) -> None:
        """Count the probe failures each of this agent's nodes added since the last snapshot."""
        for node in snap.desired.nodes:
            record = snap.records.get(node.name)
            if not node.is_local or record is None:
                continue
            now, before = record.probe_failures, self._probe_failures.get(node.name, 0)
            added = now - before if now >= before else now  # a success in between reset the run
            if added > 0:
                self.probe_failures.labels(snap.desired.spec.cluster.name, node.host, node.name).inc(added)
            self._probe_failures[node.name] = now

    def restarts_by_reason(self) -> dict[tuple[str, str], int]:
        """(node, reason) -> count, for tests and the status line."""
        counts: dict[tuple[str, str], int] = {}
        for metric in self.restarts.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    key = (sample.labels["node"], sample.labels["reason"])
                    counts[key] = counts.get(key, 0) + int(sample.value)
        return counts

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The text Prometheus asked for (`Accept`), and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
