"""`/metrics`: every series labelled with its cluster and host, within Prometheus's conventions
(`promtool check metrics`), and the signals an on-call alerts on: unknown nodes of a lost
machine, agents of the file never seen, Docker and the store unreachable, the meta leader,
disruption slots, files that differ, last exits, probe failures.

The snapshots are real `Snapshot`s of real plans (the planner's, or hand-set node states); the
text is read back with prometheus_client's own parser and checked by promtool itself.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ceres_supervisor.adapters import engine
from ceres_supervisor.cluster.view import AgentRecord, StoreView
from ceres_supervisor.decisions.backoff import Count
from ceres_supervisor.decisions.planning import ExitInfo, NodeRecord, NodeState
from ceres_supervisor.desired.containers import DesiredCluster
from ceres_supervisor.model.observed import MetaLeader
from ceres_supervisor.surfaces import metrics
from ceres_supervisor.surfaces.snapshot import Coordination, ReloadResult, Snapshot

from .conftest import BASE
from .sample import NOW, desired_cluster, healthy_observation, healthy_plan, plan_of

TWO_HOSTS = BASE.replace('name = "db1"\nhost = "127.0.0.1"', 'name = "db1"\nhost = "127.0.0.2"')
"""db1 on a second machine, 127.0.0.2; meta0 and db0 on this one."""
STORE_OK = Coordination(True, "ok", "http://127.0.0.1:2379", True)


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("no promtool on PATH: run scripts/ensure-promtool.sh (make test does)", pytrace=False)
    return found


def agent(host: str, nodes: tuple[str, ...], spec_hash: str = "h") -> AgentRecord:
    return AgentRecord(
        host, 1, "0.2.0", f"{host}:5480", spec_hash, "2026-11-28T00:00:00Z", "2026-11-28T00:00:01Z", nodes
    )


def snapshot(desired: DesiredCluster, plan: object, **changes: object) -> Snapshot:
    snap = Snapshot(
        7,
        NOW,
        desired,
        ReloadResult(True, None, None),
        5.0,
        "127.0.0.1",
        healthy_observation(desired),
        plan,
        getattr(plan, "records", {}),
        None,
        coordination=STORE_OK,
    )
    return replace(snap, **changes)  # type: ignore[arg-type]


def scrape(
    snap: Snapshot, registry: metrics.Metrics | None = None
) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)], from the text /metrics serves."""
    body, _content_type = (registry or metrics.Metrics(lambda: snap)).exposition(None)
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float | None:
    found = [v for got, v in samples.get(name, []) if labels.items() <= got.items()]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


def states(samples: dict[str, list[tuple[dict[str, str], float]]]) -> dict[str, str]:
    return {labels["node"]: labels["state"] for labels, v in samples["ceres_supervisor_node_state"] if v == 1}


def test_promtool_finds_nothing_to_say_and_every_series_has_cluster_and_host(tmp_path: Path) -> None:
    desired, plan = healthy_plan(tmp_path)
    records = {**plan.records, "db0": replace(plan.records["db0"], last_exit=ExitInfo(137, False, None))}
    snap = snapshot(
        desired,
        plan,
        records=records,
        reload=ReloadResult(True, None, datetime(2026, 11, 28, tzinfo=UTC)),
        store=StoreView(
            slots={"db0": {"host": "127.0.0.1", "reason": "planned", "since": "2026-11-28T00:00:00Z"}}
        ),
    )
    registry = metrics.Metrics(lambda: snap)
    registry.count_restart("db0", "died")
    registry.probe_duration.observe(0.002)
    registry.reconcile_duration.observe(0.004)
    registry.published(replace(snap, records={**records, "db1": replace(records["db1"], probe_failures=2)}))
    body, _ = registry.exposition(None)
    checked = subprocess.run([promtool(), "check", "metrics"], input=body, capture_output=True, check=False)
    assert checked.returncode == 0 and not checked.stdout and not checked.stderr, checked
    for family in text_string_to_metric_families(body.decode()):
        if family.name.startswith("ceres_supervisor_"):
            assert family.documentation and family.samples, family.name
            for sample in family.samples:
                assert {"cluster", "host"} <= set(sample.labels), sample
                assert sample.labels["cluster"] == "defaultCluster"
    assert "ceres_supervisor_info" not in body.decode()  # the convention is _build_info
    samples = scrape(snap, registry)
    for name in (
        "ceres_supervisor_build_info",
        "ceres_supervisor_docker_up",
        "ceres_supervisor_coordination_up",
        "ceres_supervisor_spec_info",
        "ceres_supervisor_last_reload_timestamp_seconds",
        "ceres_supervisor_disruption_slot_held_seconds",
        "ceres_supervisor_node_last_exit_code",
        "ceres_supervisor_node_failures",
        "ceres_supervisor_probe_failures_total",
        "ceres_supervisor_restarts_total",
        "ceres_supervisor_meta_leader",
        "ceres_supervisor_agent_up",
        "ceres_supervisor_spec_hashes_differ",
        "ceres_supervisor_lease_held",
    ):
        assert samples.get(name), f"{name} missing"
    assert value(samples, "ceres_supervisor_node_last_exit_code", node="db0") == 137
    assert value(samples, "ceres_supervisor_probe_failures_total", node="db1") == 2
    assert (
        value(samples, "ceres_supervisor_last_reload_timestamp_seconds")
        == datetime(2026, 11, 28, tzinfo=UTC).timestamp()
    )
    assert value(samples, "ceres_supervisor_disruption_slot_held_seconds", node="db0") > 0  # type: ignore[operator]


def test_reconcile_buckets_reach_the_docker_call_timeouts(tmp_path: Path) -> None:
    desired, plan = healthy_plan(tmp_path)
    snap = snapshot(desired, plan)
    registry = metrics.Metrics(lambda: snap)
    registry.reconcile_duration.observe(12.0)  # a cycle that waited on a hung Docker Engine
    buckets = {
        labels["le"]: v
        for labels, v in scrape(snap, registry)["ceres_supervisor_reconcile_duration_seconds_bucket"]
    }
    assert buckets["10.0"] == 0 and buckets["30.0"] == 1 and buckets["2.5"] == 0
    assert {engine.LIST_TIMEOUT_S, engine.CALL_TIMEOUT_S} <= set(metrics.CYCLE_BUCKETS_S)


def test_a_lost_machine_s_nodes_are_unknown_and_an_agent_never_seen_is_down(tmp_path: Path) -> None:
    desired = desired_cluster(tmp_path, TWO_HOSTS, is_local=lambda host: host == "127.0.0.1")
    plan = plan_of({"meta0": NodeState.HEALTHY, "db0": NodeState.HEALTHY, "db1": NodeState.REMOTE})
    alone = StoreView(agents={"127.0.0.1": agent("127.0.0.1", ("meta0", "db0"))})
    samples = scrape(snapshot(desired, plan, store=alone))
    assert states(samples) == {"meta0": "healthy", "db0": "healthy", "db1": "unknown"}
    unknown = [
        labels for labels, v in samples["ceres_supervisor_node_state"] if labels["node"] == "db1" and v == 1
    ]
    assert unknown == [
        {
            "cluster": "defaultCluster",
            "host": "127.0.0.2",
            "node": "db1",
            "role": "ceresdb",
            "state": "unknown",
        }
    ]
    assert value(samples, "ceres_supervisor_agent_up", host="127.0.0.1") == 1
    assert (
        value(samples, "ceres_supervisor_agent_up", host="127.0.0.2") == 0
    )  # never seen: a series all the same

    # Seen leaving: the same.
    departed = replace(alone, departed={"127.0.0.2": (agent("127.0.0.2", ("db1",)), "2026-11-28T00:00:05Z")})
    samples = scrape(snapshot(desired, plan, store=departed))
    assert (
        states(samples)["db1"] == "unknown"
        and value(samples, "ceres_supervisor_agent_up", host="127.0.0.2") == 0
    )

    # Up and publishing db1: its own agent exports it; this one says nothing of it.
    both = replace(
        alone,
        agents={**alone.agents, "127.0.0.2": agent("127.0.0.2", ("db1",))},
        nodes={"db1": {"name": "db1", "role": "ceresdb", "state": "healthy"}},
    )
    samples = scrape(snapshot(desired, plan, store=both))
    assert states(samples) == {"meta0": "healthy", "db0": "healthy"}
    assert value(samples, "ceres_supervisor_agent_up", host="127.0.0.2") == 1


def test_one_agent_running_two_addresses_of_its_machine_covers_both(tmp_path: Path) -> None:
    desired = desired_cluster(tmp_path, TWO_HOSTS)  # every loopback address is this machine
    _d, plan = healthy_plan(tmp_path)
    store = StoreView(agents={"127.0.0.1": agent("127.0.0.1", ("meta0", "db0", "db1"))})
    samples = scrape(snapshot(desired, plan, store=store))
    assert value(samples, "ceres_supervisor_agent_up", host="127.0.0.2") == 1


def test_while_the_store_cannot_be_read_nothing_is_claimed_about_the_others(tmp_path: Path) -> None:
    desired = desired_cluster(tmp_path, TWO_HOSTS, is_local=lambda host: host == "127.0.0.1")
    plan = plan_of({"meta0": NodeState.HEALTHY, "db0": NodeState.HEALTHY, "db1": NodeState.REMOTE})
    samples = scrape(snapshot(desired, plan, coordination=Coordination(False, "no quorum", None, True)))
    assert value(samples, "ceres_supervisor_coordination_up") == 0
    assert states(samples) == {"meta0": "healthy", "db0": "healthy"}
    assert value(samples, "ceres_supervisor_agent_up", host="127.0.0.2") is None
    assert value(samples, "ceres_supervisor_agent_up", host="127.0.0.1") == 1
    assert "ceres_supervisor_spec_hashes_differ" not in samples


def test_docker_unreachable_makes_this_agent_s_nodes_unknown(tmp_path: Path) -> None:
    desired, plan = healthy_plan(tmp_path)
    samples = scrape(snapshot(desired, plan, engine_error="Docker Engine unavailable: no socket"))
    assert value(samples, "ceres_supervisor_docker_up") == 0
    assert set(states(samples).values()) == {"unknown"}


def test_the_meta_leader_and_files_that_differ(tmp_path: Path) -> None:
    desired, plan = healthy_plan(tmp_path)
    samples = scrape(snapshot(desired, plan))
    assert value(samples, "ceres_supervisor_meta_leader", node="meta0") == 1
    no_leader = replace(healthy_observation(desired), leader=MetaLeader(NOW, None, False, "no leader key"))
    samples = scrape(snapshot(desired, plan, observation=no_leader))
    assert value(samples, "ceres_supervisor_meta_leader", node="meta0") == 0
    not_read = replace(healthy_observation(desired), leader=None)
    assert "ceres_supervisor_meta_leader" not in scrape(snapshot(desired, plan, observation=not_read))
    differ = StoreView(
        agents={
            "127.0.0.1": agent("127.0.0.1", ("meta0",), desired.spec_hash),
            "127.0.0.9": agent("127.0.0.9", (), "another"),
        }
    )
    assert value(scrape(snapshot(desired, plan, store=differ)), "ceres_supervisor_spec_hashes_differ") == 1
    same = StoreView(agents={"127.0.0.1": agent("127.0.0.1", ("meta0",), desired.spec_hash)})
    assert value(scrape(snapshot(desired, plan, store=same)), "ceres_supervisor_spec_hashes_differ") == 0


def test_probe_failures_are_counted_once_each(tmp_path: Path) -> None:
    desired, plan = healthy_plan(tmp_path)
    snap = snapshot(desired, plan)
    registry = metrics.Metrics(lambda: snap)
    base = plan.records["db0"]
    for failures in (0, 1, 1, 2, 0, 1, 3):  # successive snapshots: 2 failures, a success, then 3
        registry.published(
            replace(snap, records={**plan.records, "db0": replace(base, probe_failures=failures)})
        )
    assert value(scrape(snap, registry), "ceres_supervisor_probe_failures_total", node="db0") == 5


def test_a_crashlooping_node_shows_its_failures_and_state(tmp_path: Path) -> None:
    desired, _plan = healthy_plan(tmp_path)
    plan = plan_of(
        {"meta0": NodeState.HEALTHY, "db0": (NodeState.CRASHLOOP, "exit 3"), "db1": NodeState.HEALTHY},
        {"db0": NodeRecord(count=Count(5, (), True), last_exit=ExitInfo(3, False, None))},
    )
    samples = scrape(snapshot(desired, plan, records=plan.records))
    assert states(samples)["db0"] == "crashloop"
    assert value(samples, "ceres_supervisor_node_failures", node="db0") == 5
    assert value(samples, "ceres_supervisor_node_last_exit_code", node="db0") == 3


def test_a_slot_is_reported_with_its_age(tmp_path: Path) -> None:
    desired, plan = healthy_plan(tmp_path)
    since = (datetime.now(UTC) - timedelta(minutes=20)).isoformat().replace("+00:00", "Z")
    store = StoreView(slots={"db1": {"host": "127.0.0.1", "reason": "unhealthy", "since": since}})
    age = value(
        scrape(snapshot(desired, plan, store=store)),
        "ceres_supervisor_disruption_slot_held_seconds",
        node="db1",
        host="127.0.0.1",
    )
    assert age is not None and 1190 <= age <= 1300
