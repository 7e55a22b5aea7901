"""What the decisions say and keep, word for word and field by field: the policy read from the file,
the crashloop window's edge, the budget's wording and its meta rule, the reload refusals, the
grant of a stop (its view, its record, its note), the rolling gate's reasons, the pause book's
queue on disk. Pure; written so that a changed word or a dropped field fails a test."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from ceres_supervisor.daemon import reloading
from ceres_supervisor.decisions import backoff
from ceres_supervisor.decisions.budget import Budget, blockers, describe
from ceres_supervisor.decisions.planning import Controls, NodeState, Note
from ceres_supervisor.desired import loading, locality
from ceres_supervisor.model.errors import DesiredStateError
from ceres_supervisor.model.spec import SupervisorSection
from ceres_supervisor.operations.pauses import Change, PauseBook, PauseFileError

from .test_backoff import POLICY
from .test_planning import actions, build, failing, healthy_records, observation, plan, probe, running
from .test_reloading import THREE_META, spec

# --- the policy and the count ----------------------------------------------------------------------------


def test_the_policy_is_the_file_s_supervisor_section_field_by_field() -> None:
    section = SupervisorSection.model_validate(
        {"failure_threshold": 4, "start_timeout": "77s", "lease_grace": "66s", "backoff_initial": "2s",
         "backoff_max": "55s", "backoff_reset": "11m", "crashloop_failures": 6, "crashloop_window": "12m"}
    )  # fmt: skip
    assert backoff.Policy.of(section) == backoff.Policy(4, 77.0, 66.0, 2.0, 55.0, 660.0, 6, 720.0)


def test_a_failure_exactly_one_window_ago_is_out_of_the_crashloop_window() -> None:
    four = backoff.Count(4, (0.0, 100.0, 200.0, 300.0))
    _count, _delay, began = backoff.count(four, None, 600.0, POLICY, 0.0)  # 0.0 is 600 s old: out
    assert began is False
    _count, _delay, began = backoff.count(four, None, 599.0, POLICY, 0.0)
    assert began is True


# --- the budget ------------------------------------------------------------------------------------------------


def test_the_budget_says_who_holds_it_back_in_file_order_of_names() -> None:
    assert (
        describe(["db1 (unhealthy)", "db2 (starting)"])
        == "waiting for disruption budget: db1 (unhealthy), db2 (starting)"
    )


def test_a_meta_member_waits_for_every_other_whatever_max_unavailable() -> None:
    """etcd keeps its quorum only with every other member up: max_unavailable is CeresDB's."""
    members = {"meta0": ("meta", None), "meta1": ("meta", "unhealthy"), "meta2": ("meta", None)}
    assert blockers("meta0", "meta", members, Budget(max_unavailable=2)) == ["meta1 (unhealthy)"]
    dbs = {"db0": ("ceresdb", None), "db1": ("ceresdb", "unhealthy")}
    assert blockers("db0", "ceresdb", dbs, Budget(max_unavailable=2)) is None


def test_a_node_the_budget_knows_nothing_of_may_be_stopped_when_nothing_else_is_down() -> None:
    assert blockers("db9", "ceresdb", {"db0": ("ceresdb", None)}, Budget()) is None


# --- reload refusals ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        (lambda t: t.replace("[cluster]\n", '[cluster]\nname = "other"\n'), "cluster.name",
         "cannot change from 'defaultCluster' to 'other' while the supervisor runs (nodes would start on other "
         "data); stop the daemon, move the data, start it again"),
        (lambda t: t.replace('name = "meta2"', 'name = "meta9"'), "meta.nodes",
         "cannot change the meta members (names, hosts, client or peer ports) of a running cluster: CeresMeta's "
         "embedded etcd keeps its member list, and changing it is a runtime reconfiguration of etcd this "
         "supervisor does not do; put the file back (meta0@127.0.0.1:2379/2380, meta1@127.0.0.1:2389/2390, "
         "meta2@127.0.0.1:2399/2400)"),
    ],
)  # fmt: skip
def test_a_reload_refusal_says_what_and_how_to_undo_it(
    tmp_path: Path, change: Callable[[str], str], key: str, message: str
) -> None:
    problems = reloading.static_problems(
        spec(tmp_path, THREE_META, "a"), spec(tmp_path, change(THREE_META), "b")
    )
    assert [(p.path, p.message) for p in problems] == [(key, message)]


async def test_a_refused_reload_names_the_file_and_a_good_one_resolves_its_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = spec(tmp_path, THREE_META, "running")
    path = tmp_path / "new.toml"
    path.write_text(THREE_META.replace("[cluster]\n", '[cluster]\nname = "other"\n'))
    with pytest.raises(DesiredStateError) as refused:
        await reloading.prepare(str(path), running, locality.Locality("127.0.0.1"))
    assert refused.value.source == str(path)
    monkeypatch.setenv("CERES_TEST_KEY_SECRET", "s3cr3t-value")
    path.write_text(
        THREE_META + '\n[ceresdb.object_store]\ntype = "Aliyun"\nkey_id = "k"\n'
        'key_secret = { env = "CERES_TEST_KEY_SECRET" }\nendpoint = "e"\nbucket = "b"\nprefix = "p"\n'
    )
    reloaded = await reloading.prepare(str(path), running, locality.Locality("127.0.0.1"))
    db0 = reloaded.desired.node("db0")
    assert db0 is not None and db0.has_secret and b"s3cr3t-value" in db0.config_text
    assert loading.load(path).spec.cluster.name == running.cluster.name


# --- a stop granted -------------------------------------------------------------------------------------------------


def test_a_granted_stop_shows_its_reason_keeps_the_lease_and_counts_the_failure_once(tmp_path: Path) -> None:
    cluster = build(tmp_path)
    cs, probes, records = failing(cluster, "db0")
    p = plan(cluster, observation(cluster, cs, probes=probes), records)
    reason = "unhealthy: 3 failed probes: GET /: timed out"
    assert actions(p) == [("stop", "db0")]
    view, rec = p.views["db0"], p.records["db0"]
    assert (view.state, view.reason, view.next_restart_at) == (
        NodeState.UNHEALTHY,
        reason,
        rec.next_restart_at,
    )
    assert view.lease == p.views["db1"].lease and view.lease is not None
    assert rec.next_restart_at == 1000.0 and rec.expected_exit == "id-db0" and rec.budget_wait is None
    assert p.notes == (Note("db0", "unhealthy", reason, "failure 1; restart in 0.0s"),)


def test_a_stop_that_waited_for_the_budget_forgets_the_wait_once_granted(tmp_path: Path) -> None:
    cluster = build(tmp_path)
    cs, probes, records = failing(cluster, "db0", "db1")
    waited = plan(cluster, observation(cluster, cs, probes=probes), records)
    assert waited.records["db1"].budget_wait == "waiting for disruption budget: db0 (stopping)"
    assert waited.views["db1"].reason == (
        "unhealthy: 3 failed probes: GET /: timed out; waiting for disruption budget: db0 (stopping)"
    )
    records = {**waited.records, "db0": records["db0"]}
    cs, probes = running(cluster)
    probes["db1"] = probe(cs[2], ok=False)
    granted = plan(
        cluster, observation(cluster, cs, probes=probes), {**records, "db0": healthy_records(cs)["db0"]}
    )
    assert actions(granted) == [("stop", "db1")] and granted.records["db1"].budget_wait is None


# --- the rolling gate's reasons ---------------------------------------------------------------------------------


def test_ceresdb_waits_for_every_meta_member_still_on_its_old_spec_here_and_elsewhere(tmp_path: Path) -> None:
    from .test_planning import META3  # noqa: PLC0415

    big = build(tmp_path, META3)
    cs, _probes = running(big)
    changed = [replace(c, spec_hash="old") if c.node in ("meta0", "db0") else c for c in cs]
    obs = observation(big, changed, probes={c.node: probe(c) for c in changed})
    p = plan(big, obs, healthy_records(changed), budget=Budget(outdated=frozenset({"meta2"})),
             controls=Controls(frozenset({"meta0"})))  # fmt: skip
    assert actions(p) == []
    assert (p.views["db0"].reason or "").endswith(
        "waiting its turn: meta first (meta0, meta2 not recreated yet)"
    )


def test_a_recreate_waits_for_the_one_in_flight_and_for_every_node_not_healthy(tmp_path: Path) -> None:
    from .test_planning import META3  # noqa: PLC0415

    big = build(tmp_path, META3)
    cs, _probes = running(big)
    changed = [replace(c, spec_hash="old") if c.node == "db0" else c for c in cs]
    probes = {c.node: probe(c) for c in changed}
    busy = plan(
        big, observation(big, changed, probes=probes, busy={"db2": "recreate"}), healthy_records(changed)
    )
    assert (busy.views["db0"].reason or "").endswith("waiting its turn: another node is being recreated")
    records = healthy_records(changed)
    for name in ("db1", "db2"):
        records[name] = replace(records[name], healthy_since=None, run_seen_at=999.0)  # starting
    starting = plan(big, observation(big, changed, probes={"meta0": probes["meta0"], "meta1": probes["meta1"],
                                                           "meta2": probes["meta2"]}), records)  # fmt: skip
    assert (starting.views["db0"].reason or "").endswith("waiting its turn: db1, db2 not healthy")


# --- the pause book on disk ------------------------------------------------------------------------------------------


def test_the_queue_on_disk_reads_back_as_the_changes_it_holds(tmp_path: Path) -> None:
    (tmp_path / "paused.json").write_text(json.dumps(
        {"all": True, "nodes": ["db0"], "pending": [[["db1"], True, False], [[], False, True]]}
    ))  # fmt: skip
    book = PauseBook.open(str(tmp_path))
    assert book.pending == [Change(1, frozenset({"db1"}), True, False), Change(2, frozenset(), False, True)]
    assert book.current.all is True and book.current.nodes == {"db0"}


@pytest.mark.parametrize(
    ("pending", "why"),
    [
        ([["db1", True, False]], "a pending change is not [nodes, pause, everything]"),
        ([[["db1"], True]], "a pending change is not [nodes, pause, everything]"),
        ([[["db1"], True, "no"]], "a pending change is mistyped"),
        ([[["db1"], "yes", False]], "a pending change is mistyped"),
        ([[[1], True, False]], "a pending change is mistyped"),
        ("db1", "a pending change is not [nodes, pause, everything]"),
    ],
)
def test_a_queue_on_disk_that_is_not_one_refuses_the_start(tmp_path: Path, pending: object, why: str) -> None:
    (tmp_path / "paused.json").write_text(json.dumps({"all": False, "nodes": [], "pending": pending}))
    with pytest.raises(PauseFileError) as refused:
        PauseBook.open(str(tmp_path))
    assert f"not a pause book ({why}); fix or remove it" in str(refused.value)
