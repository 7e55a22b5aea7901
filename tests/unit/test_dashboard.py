"""etc/grafana/ceres-supervisor.json asks only for series the daemon exports, with their labels.

The exported families come from a real `metrics.Metrics` over a real plan (no mock), read back
with prometheus_client's own parser.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ceres_supervisor.decisions import planning
from ceres_supervisor.decisions.planning import NodeRecord, Policy
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
from ceres_supervisor.surfaces import metrics

from .conftest import BASE

DASHBOARD = Path(__file__).resolve().parents[2] / "etc" / "grafana" / "ceres-supervisor.json"
NOW = 1000.0
WALL = datetime(2026, 11, 28, tzinfo=UTC)
POLICY = Policy(
    failure_threshold=3,
    start_timeout_s=120,
    lease_grace_s=60,
    backoff_initial_s=1,
    backoff_max_s=60,
    backoff_reset_s=600,
    crashloop_failures=5,
    crashloop_window_s=600,
)
SCRAPE_LABELS = {"instance", "job"}
"""Labels Prometheus adds to every scraped series."""
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "inf",
    "nan",
}
SUFFIXES = {"_bucket": "histogram", "_sum": "histogram", "_count": "histogram", "_total": "counter"}


@dataclass(frozen=True)
class Snapshot:
    """What metrics.Snapshotlike asks for."""

    desired: desired.DesiredCluster
    plan: planning.Plan | None
    reload_ok: bool = True
    agents: dict[str, bool] = field(default_factory=lambda: {"127.0.0.1": True, "127.0.0.2": False})


def healthy_plan(tmp_path: Path) -> tuple[desired.DesiredCluster, planning.Plan]:
    """1 meta + 2 CeresDB nodes, running for a while, probes ok, every shard lock held."""
    path = tmp_path / "cluster.toml"
    path.write_text(BASE)
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
    assigned: dict[str, tuple[int, ...]] = {n.endpoint: (i, i + 2) for i, n in enumerate(cluster.ceresdb)}
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
        name: NodeRecord(run_key=c.run_key, healthy_since=NOW - 300, last_probe_at=NOW - 1)
        for name, c in containers.items()
    }
    return cluster, planning.plan(cluster, observation, records, NOW, lambda: 0.0, POLICY)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, set[str]]]:
    """Family name -> (type, the labels its samples carry), as the daemon's /metrics has them."""
    cluster, plan = healthy_plan(tmp_path_factory.mktemp("dashboard"))
    assert {str(v.state) for v in plan.views.values()} == {"healthy"}
    registry = metrics.Metrics(lambda: Snapshot(cluster, plan))
    registry.count_restart("db0", "died")  # a labelled counter shows its labels once counted
    registry.probe_duration.observe(0.002)
    registry.reconcile_duration.observe(0.004)
    body, _content_type = registry.exposition(None)
    families: dict[str, tuple[str, set[str]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        labels = {label for sample in family.samples for label in sample.labels}
        families[family.name] = (family.type, labels)
        assert family.samples, f"{family.name} has no samples: its labels cannot be checked"
    return families


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in doc["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def expressions(doc: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(panel title, PromQL, legend) of every panel target."""
    for panel in panels(doc):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"], target.get("legendFormat", "")


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects: identifiers that are not functions, keywords,
    label names or values, durations or numbers."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+\w+", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # dashboard variables
    text = re.sub(r"(?<![\w:])\d+(\.\d+)?([eE][+-]?\d+)?", " ", text)  # numbers
    names = set()
    for match in re.finditer(r"(?<![\w:])[a-zA-Z_:][\w:]*", text):
        name = match.group(0)
        if re.match(r"\s*\(", text[match.end() :]) or name.lower() in PROMQL_WORDS:
            continue  # a function call or a keyword
        names.add(name)
    return names


def grouping_labels(expr: str) -> set[str]:
    return {
        label.strip()
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
        for label in group.split(",")
        if label.strip()
    }


def family_of(name: str, exported: dict[str, tuple[str, set[str]]]) -> str | None:
    """The exported family a series name belongs to (histogram and counter suffixes included)."""
    if name in exported:
        return name
    for suffix, kind in SUFFIXES.items():
        base = name.removesuffix(suffix)
        if base != name and exported.get(base, ("", set()))[0] == kind:
            return base
    return None


def test_the_expression_parser() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{instance=~"$instance", x="y z"}[5m])))'
    ) == {"a_bucket"}
    assert metric_names('count(b{state!~"healthy|remote"} == 1) or vector(0)') == {"b"}
    assert metric_names("max by (node, state) (c == 1) / on(node) group_left(role) d offset 5m") == {"c", "d"}
    assert metric_names("rate(process_cpu_seconds_total[5m]) * 1e3") == {"process_cpu_seconds_total"}
    assert grouping_labels("sum by (node, reason) (increase(x[5m]))") == {"node", "reason"}


def test_every_series_on_the_dashboard_is_exported(exported: dict[str, tuple[str, set[str]]]) -> None:
    used: set[str] = set()
    for title, expr, legend in expressions(dashboard()):
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        families = {name: family_of(name, exported) for name in names}
        missing = sorted(n for n, f in families.items() if f is None)
        assert not missing, f"{title}: {missing} not exported (exported: {sorted(exported)})"
        labels = set().union(*(exported[f][1] for f in families.values() if f)) | SCRAPE_LABELS
        if any(n.endswith("_bucket") for n in names):
            labels.add("le")
        wanted = grouping_labels(expr) | set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
        assert wanted <= labels, f"{title}: labels {sorted(wanted - labels)} are on none of {sorted(names)}"
        used |= {f for f in families.values() if f}
    asked = {
        "ceres_supervisor_node_state",
        "ceres_supervisor_restarts",
        "ceres_supervisor_probe_duration_seconds",
        "ceres_supervisor_reconcile_duration_seconds",
        "ceres_supervisor_lease_held",
        "ceres_supervisor_agent_up",
        "ceres_supervisor_reload_success",
        "process_resident_memory_bytes",
        "process_cpu_seconds",
        "ceres_supervisor_info",
    }
    assert asked <= used, sorted(asked - used)


def test_the_instance_variable_asks_for_an_exported_series(exported: dict[str, tuple[str, set[str]]]) -> None:
    for variable in dashboard()["templating"]["list"]:
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        found = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
        assert found, query
        assert found.group(1) in exported and found.group(2) in exported[found.group(1)][1] | SCRAPE_LABELS


def test_no_hard_coded_datasource_and_every_panel_titled() -> None:
    doc = dashboard()
    assert doc["schemaVersion"] >= 38
    assert [i["name"] for i in doc["__inputs"]] == ["DS_PROMETHEUS"]
    assert doc["__inputs"][0]["pluginId"] == "prometheus"

    def datasources(node: object) -> Iterator[object]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "datasource":
                    yield value
                yield from datasources(value)
        elif isinstance(node, list):
            for item in node:
                yield from datasources(item)

    for ds in datasources({k: v for k, v in doc.items() if k != "annotations"}):
        assert ds == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, ds
    ids = []
    for panel in panels(doc):
        assert panel.get("title", "").strip(), panel
        ids.append(panel["id"])
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
            assert panel["targets"], panel["title"]
            assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    assert len(ids) == len(set(ids)), "panel ids repeat"
