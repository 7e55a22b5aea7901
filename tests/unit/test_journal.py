"""The events journal: persisted under the state directory, bounded on disk, read back after a
restart, and the node state changes it records."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ceres_supervisor.decisions.planning import NodeState, Plan
from ceres_supervisor.desired.containers import DesiredCluster
from ceres_supervisor.surfaces import journal
from ceres_supervisor.surfaces.snapshot import Event

from .conftest import BASE
from .sample import desired_cluster, plan_of

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def event(i: int, node: str | None = "db0", type_: str = "died") -> Event:
    return Event(T0 + timedelta(seconds=i), node, type_, f"exit {i}", f"event number {i}")


def test_events_survive_a_restart_of_the_supervisor(tmp_path: Path) -> None:
    first = journal.Journal.open(str(tmp_path))
    for i in range(5):
        first.append(event(i))
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["message"] for line in lines] == [f"event number {i}" for i in range(5)]
    again = journal.Journal.open(str(tmp_path))
    assert list(again) == [event(i) for i in range(5)]
    again.append(event(5))
    assert list(journal.Journal.open(str(tmp_path)))[-2:] == [event(4), event(5)]


def test_the_journal_stays_bounded_on_disk_and_keeps_the_newest(tmp_path: Path) -> None:
    max_bytes = 2000
    kept = journal.Journal.open(str(tmp_path), kept=30, max_bytes=max_bytes)
    for i in range(500):
        kept.append(event(i))
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["events.jsonl", "events.jsonl.1"]
    assert all(f.stat().st_size <= max_bytes for f in files)
    assert len(kept) == 30 and list(kept)[-1] == event(499)
    back = list(journal.Journal.open(str(tmp_path), kept=30, max_bytes=max_bytes))
    assert back == [event(i) for i in range(470, 500)]


def test_a_torn_or_foreign_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    good = json.dumps(journal.document(event(1)))
    path.write_text(
        "\n".join(
            [
                good,
                "not json",
                "[1, 2]",
                '{"at": "yesterday", "type": "x", "message": "m"}',
                good[: len(good) // 2],
            ]
        )
        + "\n"
    )
    assert list(journal.Journal.open(str(tmp_path))) == [event(1)]


def test_a_state_directory_that_cannot_be_written_keeps_events_in_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the state directory should be")
    kept = journal.Journal.open(str(blocker / "state"))
    kept.append(event(1))
    kept.append(event(2))
    assert list(kept) == [event(1), event(2)]
    assert kept.persist_error is not None and "Not a directory" in kept.persist_error


def test_select_by_node_since_and_limit() -> None:
    events = [event(0, "db0"), event(1, "db1"), event(2, None, "reloaded"), event(3, "db0"), event(4, "db0")]
    assert journal.select(events, node="db0") == [events[0], events[3], events[4]]
    assert journal.select(events, since=T0 + timedelta(seconds=2)) == events[2:]
    assert journal.select(events, node="db0", limit=2) == [events[3], events[4]]
    assert journal.select(events, limit=0) == []
    assert journal.parse_time("2026-11-28T12:00:00Z") == T0
    assert journal.parse_time("2026-11-28T12:00:00") == T0  # naive: UTC
    assert journal.parse_time("10m") is None


@dataclass(frozen=True)
class Snap:
    desired: DesiredCluster
    plan: Plan | None


def test_state_changes_of_this_agents_nodes_are_recorded_once(tmp_path: Path) -> None:
    text = BASE.replace('name = "db1"\nhost = "127.0.0.1"', 'name = "db1"\nhost = "127.0.0.2"')
    cluster = desired_cluster(tmp_path, text, is_local=lambda host: host == "127.0.0.1")
    kept = journal.Journal(None)
    healthy = {"meta0": NodeState.HEALTHY, "db0": NodeState.HEALTHY, "db1": NodeState.REMOTE}
    kept.published(Snap(cluster, None), T0)  # no plan yet: nothing to say
    kept.published(Snap(cluster, plan_of(healthy)), T0)
    kept.published(Snap(cluster, plan_of(healthy)), T0 + timedelta(seconds=1))
    kept.published(
        Snap(cluster, plan_of({**healthy, "db0": (NodeState.BACKOFF, "exit 137 (SIGKILL)")})),
        T0 + timedelta(seconds=2),
    )
    kept.published(Snap(cluster, plan_of(healthy)), T0 + timedelta(seconds=3))
    states = [(e.node, e.reason, e.message) for e in kept if e.type == journal.STATE]
    assert states == [
        ("meta0", None, "healthy (first seen by this supervisor)"),
        ("db0", None, "healthy (first seen by this supervisor)"),
        ("db0", "exit 137 (SIGKILL)", "healthy -> backoff"),
        ("db0", None, "backoff -> healthy"),
    ]


def test_each_agent_keeps_its_own_journal(tmp_path: Path) -> None:
    """Several agents on one machine share its state directory: none reads another's events."""
    one = journal.Journal.open(str(tmp_path), agent="127.0.0.1")
    two = journal.Journal.open(str(tmp_path), agent="127.0.0.2")
    one.append(event(1, "db0"))
    two.append(event(2, "db2"))
    assert list(journal.Journal.open(str(tmp_path), agent="127.0.0.1")) == [event(1, "db0")]
    assert list(journal.Journal.open(str(tmp_path), agent="127.0.0.2")) == [event(2, "db2")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events-127.0.0.1.jsonl", "events-127.0.0.2.jsonl"]
    assert journal.Journal.open(str(tmp_path), agent="a/../b").path == tmp_path / "events-a_.._b.jsonl"
