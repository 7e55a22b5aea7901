"""etc/grafana/ceres-supervisor.json asks only for series the daemon exports, with their labels.

The exported families come from a real `metrics.Metrics` over a real plan (no mock), read back
with prometheus_client's own parser.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .promql import SCRAPE_LABELS, family_of, grouping_labels, metric_names
from .promql import exported as exported_families

DASHBOARD = Path(__file__).resolve().parents[2] / "etc" / "grafana" / "ceres-supervisor.json"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, set[str]]]:
    """Family name -> (type, the labels its samples carry), as the daemon's /metrics has them."""
    return exported_families(tmp_path_factory.mktemp("dashboard"))


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
        "ceres_supervisor_build_info",
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
