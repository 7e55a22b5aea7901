"""What the alerting rules and the dashboard may ask for: the families the daemon exports (from a
real `metrics.Metrics` over a real snapshot in which every series has a sample), and a small
reader of PromQL expressions (the series names and grouping labels they use)."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from ceres_supervisor.cluster.view import AgentRecord, StoreView
from ceres_supervisor.decisions.planning import ExitInfo, NodeState
from ceres_supervisor.surfaces import metrics
from ceres_supervisor.surfaces.snapshot import Coordination, ReloadResult, Snapshot

from .conftest import BASE
from .sample import NOW, desired_cluster, healthy_observation, healthy_plan

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


def exported(tmp_path: Path) -> dict[str, tuple[str, set[str]]]:
    """Family name -> (type, the labels its samples carry), as a daemon's /metrics has them when
    every series has something to say: a node of a lost machine, a slot, a last exit, a reload."""
    _desired, plan = healthy_plan(tmp_path)
    two_hosts = BASE.replace('name = "db1"\nhost = "127.0.0.1"', 'name = "db1"\nhost = "127.0.0.2"')
    desired = desired_cluster(tmp_path, two_hosts, is_local=lambda host: host == "127.0.0.1")
    views = {**plan.views, "db1": replace(plan.views["db1"], state=NodeState.REMOTE)}
    records = {**plan.records, "db0": replace(plan.records["db0"], last_exit=ExitInfo(137, False, None))}
    me = AgentRecord("127.0.0.1", 1, "0.2.0", "127.0.0.1:5480", desired.spec_hash, "t", "t", ("meta0", "db0"))
    store = StoreView(
        agents={"127.0.0.1": me},
        slots={"db0": {"host": "127.0.0.1", "reason": "planned", "since": "2026-11-28T00:00:00Z"}},
    )
    snap = Snapshot(
        1,
        NOW,
        desired,
        ReloadResult(True, None, datetime(2026, 11, 28, tzinfo=UTC)),
        5.0,
        "127.0.0.1",
        healthy_observation(desired),
        replace(plan, views=views, records=records),
        records,
        None,
        store,
        Coordination(True, "ok", "http://127.0.0.1:2379", True),
    )
    registry = metrics.Metrics(lambda: snap)
    registry.count_restart("db0", "died")  # a labelled counter shows its labels once counted
    registry.published(replace(snap, records={**records, "db0": replace(records["db0"], probe_failures=1)}))
    registry.probe_duration.observe(0.002)
    registry.reconcile_duration.observe(0.004)
    body, _content_type = registry.exposition(None)
    families: dict[str, tuple[str, set[str]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        labels = {label for sample in family.samples for label in sample.labels}
        families[family.name] = (family.type, labels)
        assert family.samples, f"{family.name} has no samples: its labels cannot be checked"
    return families


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


def matched_labels(expr: str) -> set[str]:
    """The label names of every matcher in the expression (`{job=~"...", state!="x"}`)."""
    return {
        m for group in re.findall(r"\{([^}]*)\}", expr) for m in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", group)
    }


def family_of(name: str, families: dict[str, tuple[str, set[str]]]) -> str | None:
    """The exported family a series name belongs to (histogram and counter suffixes included)."""
    if name in families:
        return name
    for suffix, kind in SUFFIXES.items():
        base = name.removesuffix(suffix)
        if base != name and families.get(base, ("", set()))[0] == kind:
            return base
    return None
