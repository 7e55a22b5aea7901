"""etc/grafana/ceres-supervisor.json: it asks only for series the daemon exports, with their
labels, in PromQL that Prometheus parses; every query keeps to the chosen job, cluster and
supervisors; its data source works provisioned from a file as well as imported; it shows unknown
nodes, `up`, and the on-call's signals, and marks restarts and reloads on every graph.

The exported families come from a real `metrics.Metrics` over a real plan (no mock), read back
with prometheus_client's own parser; the PromQL is parsed by promtool itself.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .promql import SCRAPE_LABELS, family_of, grouping_labels, matched_labels, metric_names
from .promql import exported as exported_families

DASHBOARD = Path(__file__).resolve().parents[2] / "etc" / "grafana" / "ceres-supervisor.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


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
    """(panel or annotation title, PromQL, legend) of every panel target and annotation query."""
    for panel in panels(doc):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"], target.get("legendFormat", "")
    for annotation in doc["annotations"]["list"]:
        if "expr" in annotation:
            yield f"annotation {annotation['name']}", annotation["expr"], annotation.get("titleFormat", "")


def selectors(expr: str) -> list[tuple[str, str]]:
    """(series name, matchers) of every selector with matchers in the expression."""
    return re.findall(r"([a-zA-Z_:][\w:]*)\{([^}]*)\}", expr)


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
    exported = {**exported, "up": ("gauge", set())}  # Prometheus's own, for each target
    for title, expr, legend in expressions(dashboard()):
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        families = {name: family_of(name, exported) for name in names}
        missing = sorted(n for n, f in families.items() if f is None)
        assert not missing, f"{title}: {missing} not exported (exported: {sorted(exported)})"
        labels = set().union(*(exported[f][1] for f in families.values() if f)) | SCRAPE_LABELS
        if any(n.endswith("_bucket") for n in names):
            labels.add("le")
        wanted = (
            grouping_labels(expr) | matched_labels(expr) | set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
        )
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
        "up",
    }
    assert asked <= used, sorted(asked - used)


def test_every_query_keeps_to_the_chosen_job_cluster_and_supervisors() -> None:
    """A Prometheus scrapes other targets too: no query may plot them (the memory and CPU panels
    once did), and two clusters in one Prometheus stay apart."""
    for title, expr, _legend in expressions(dashboard()):
        found = selectors(expr)
        assert found, f"{title}: a selector without matchers: {expr}"
        for name, matchers in found:
            assert 'job=~"$job"' in matchers, f"{title}: {name} without the job filter"
            if name.startswith("ceres_supervisor_"):
                assert 'cluster=~"$cluster"' in matchers, f"{title}: {name} without the cluster filter"
            if not title.startswith("annotation"):
                assert 'instance=~"$instance"' in matchers, f"{title}: {name} without the supervisor filter"


def test_prometheus_parses_every_query(tmp_path: Path) -> None:
    """Each query, its variables given values, as a recording rule that `promtool check rules` parses."""
    values = {"$__rate_interval": "5m", "$job": ".+", "$cluster": ".+", "$instance": ".+"}
    rules = []
    for i, (_title, given, _legend) in enumerate(expressions(dashboard())):
        expr = given
        for variable, value in values.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        rules.append(f"      - record: dashboard:query{i}\n        expr: {json.dumps(expr)}\n")
    path = tmp_path / "queries.yml"
    path.write_text("groups:\n  - name: dashboard\n    rules:\n" + "".join(rules))
    found = shutil.which("promtool")
    assert found is not None, "no promtool on PATH: run scripts/ensure-promtool.sh (make test does)"
    checked = subprocess.run(
        [found, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_variables_ask_for_exported_series_and_all_is_not_a_wildcard(
    exported: dict[str, tuple[str, set[str]]],
) -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert list(variables) == ["datasource", "job", "cluster", "instance"]
    for name in ("job", "cluster", "instance"):
        variable = variables[name]
        query = variable["query"]["query"]
        found = re.fullmatch(r"label_values\((\w+)(\{[^}]*\})?,\s*(\w+)\)", query)
        assert found, query
        assert found.group(1) in exported and found.group(3) in exported[found.group(1)][1] | SCRAPE_LABELS
        assert found.group(3) == name, query
        # "All" is the list of the values found, never ".+" (which matches every target of the Prometheus).
        assert variable["includeAll"] and "allValue" not in variable, variable
        assert variable["datasource"] == DATASOURCE


def test_the_datasource_works_provisioned_and_imported_and_every_panel_is_titled() -> None:
    """`${DS_...}` inputs are resolved only by the import dialog: a dashboard provisioned from a file
    keeps them verbatim and shows nothing. A data-source variable works both ways."""
    doc = dashboard()
    text = DASHBOARD.read_text()
    assert doc["schemaVersion"] >= 38
    assert "__inputs" not in doc and "${DS_" not in text
    datasource = doc["templating"]["list"][0]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")

    def datasources(node: object) -> Iterator[object]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "datasource":
                    yield value
                yield from datasources(value)
        elif isinstance(node, list):
            for item in node:
                yield from datasources(item)

    builtin = doc["annotations"]["list"][0]
    for ds in datasources({**doc, "annotations": {"list": doc["annotations"]["list"][1:]}}):
        assert ds == DATASOURCE, ds
    assert builtin["builtIn"] == 1
    ids = []
    for panel in panels(doc):
        assert panel.get("title", "").strip(), panel
        ids.append(panel["id"])
        if panel["type"] != "row":
            assert panel["datasource"] == DATASOURCE
            assert panel["targets"], panel["title"]
            assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    assert len(ids) == len(set(ids)), "panel ids repeat"


def test_unknown_nodes_up_and_the_on_call_signals_are_shown() -> None:
    doc = dashboard()
    by_title = {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in panels(doc)}
    # "Not healthy" counts unknown nodes (only healthy and remote are left out), once each.
    (not_healthy,) = by_title["Nodes not healthy"]
    assert 'state!~"healthy|remote"' in not_healthy and "max by (cluster, node)" in not_healthy
    (unknown,) = by_title["Nodes unknown"]
    assert 'state="unknown"' in unknown
    assert any(metric_names(e) == {"up"} for exprs in by_title.values() for e in exprs), "no panel shows up"
    used = {name for exprs in by_title.values() for e in exprs for name in metric_names(e)}
    assert {
        "ceres_supervisor_docker_up",
        "ceres_supervisor_coordination_up",
        "ceres_supervisor_meta_leader",
        "ceres_supervisor_disruption_slot_held_seconds",
        "ceres_supervisor_spec_hashes_differ",
        "ceres_supervisor_node_last_exit_code",
        "ceres_supervisor_node_failures",
        "ceres_supervisor_probe_failures_total",
        "ceres_supervisor_spec_info",
    } <= used


def test_restarts_and_reloads_are_annotations() -> None:
    annotations = {a["name"]: a for a in dashboard()["annotations"]["list"] if "expr" in a}
    assert metric_names(annotations["Restarts"]["expr"]) == {"ceres_supervisor_restarts_total"}
    assert metric_names(annotations["Reloads"]["expr"]) == {"ceres_supervisor_last_reload_timestamp_seconds"}
    assert all(a["enable"] and a["datasource"] == DATASOURCE for a in annotations.values())
