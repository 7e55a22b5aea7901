"""What a running daemon refuses to change on reload, each with its key path: pure, no daemon.
Then the reloads themselves (`Reloads`): the requests that share one, what each caller is answered,
what is applied, recorded, logged and told to systemd. A real file and loop, no Docker, no store."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from ceres_supervisor.adapters import systemd
from ceres_supervisor.daemon.loop import Loop, Parts, Setting
from ceres_supervisor.daemon.reloading import Reloaded, Reloads, static_problems
from ceres_supervisor.decisions import planning
from ceres_supervisor.desired import containers as desired_mod
from ceres_supervisor.desired import loading, locality, secrets
from ceres_supervisor.model.spec import DesiredState
from ceres_supervisor.model.versions import parse_release
from ceres_supervisor.observation.observer import Observer

from . import sample
from .conftest import BASE

THREE_META = BASE.replace(
    '[[meta.nodes]]\nname = "meta0"\nhost = "127.0.0.1"\n',
    "".join(
        f'[[meta.nodes]]\nname = "meta{i}"\nhost = "127.0.0.1"\nclient_port = {2379 + 10 * i}\n'
        f"peer_port = {2380 + 10 * i}\nhttp_port = {8080 + i}\n\n"
        for i in range(3)
    ),
)


def spec(tmp_path: Path, text: str, name: str) -> DesiredState:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return loading.load(path).spec


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda t: t.replace("[cluster]\n", '[cluster]\nname = "other"\n'), "cluster.name"),
        (
            lambda t: t.replace('state_dir = "/var/lib/ceres-supervisor"', 'state_dir = "/srv/x"'),
            "cluster.state_dir",
        ),
        (
            lambda t: t.replace("[cluster]\n", '[cluster]\nflavor = "horaedb"\nversion = "2.0.0"\n').replace(
                "mysql_port = 3308", "mysql_port = 3308\npostgresql_port = 5434"
            ),
            "cluster.flavor",
        ),
        (lambda t: t.replace('name = "meta2"', 'name = "meta9"'), "meta.nodes"),
        (lambda t: t.replace("client_port = 2399", "client_port = 2499"), "meta.nodes"),
        (lambda t: t.replace("peer_port = 2400", "peer_port = 2500"), "meta.nodes"),
        # A member moved to another machine, and three members cut to one: etcd keeps its member
        # list, so either would leave a member that no longer exists in the quorum.
        (
            lambda t: t.replace('name = "meta2"\nhost = "127.0.0.1"', 'name = "meta2"\nhost = "127.0.0.2"'),
            "meta.nodes",
        ),
        (lambda t: re.sub(r'\[\[meta\.nodes\]\]\nname = "meta[12]"\n(?:[^\n]+\n)+\n', "", t), "meta.nodes"),
    ],
)
def test_a_change_that_would_start_nodes_on_other_data_or_members_is_refused(
    tmp_path: Path, change: object, key: str
) -> None:
    running = spec(tmp_path, THREE_META, "running")
    new = spec(tmp_path, change(THREE_META), "new")  # type: ignore[operator]
    problems = static_problems(running, new)
    assert [p.path for p in problems] == [key], problems
    assert "cannot change" in problems[0].message


def test_a_meta_member_s_http_port_and_everything_else_may_change(tmp_path: Path) -> None:
    running = spec(tmp_path, THREE_META, "running")
    new = spec(tmp_path, THREE_META.replace("http_port = 8082", "http_port = 8092") + "\n", "new")
    assert static_problems(running, new) == []


def at(text: str, version: str, flavor: str = "ceresdb", keep: bool = False) -> str:
    """THREE_META at `version` (PostgreSQL ports from 1.2.6, as the servers open them)."""
    head = f'[cluster]\nflavor = "{flavor}"\nversion = "{version}"\n' + (
        "keep_ceresdb_data = true\n" if keep else ""
    )
    text = text.replace("[cluster]\n", head)
    if version >= "1.2.6" or flavor == "horaedb":
        text = text.replace("mysql_port = 3308", "mysql_port = 3308\npostgresql_port = 5434")
    return text


@pytest.mark.parametrize(
    ("old", "new", "sources", "expected"),
    [
        (("1.2.4",), ("1.2.5",), (), []),
        (("1.2.7",), ("2.0.0", "horaedb", True), (), []),  # the flavor changes, the 1.x data kept
        (
            ("1.2.7",),
            ("2.0.0", "horaedb"),
            (),
            [
                "cluster.flavor: cannot change from 'ceresdb' to 'horaedb': "
                "ceresdb 1.2.7 -> horaedb 2.0.0 needs cluster.keep_ceresdb_data"
            ],
        ),
        (
            ("2.0.0", "horaedb", True),
            ("1.2.7",),
            (),
            [
                "cluster.flavor: cannot change from 'horaedb' to 'ceresdb': "
                "horaedb 2.0.0 -> ceresdb 1.2.7: no way back"
            ],
        ),
        # In the middle of an upgrade the containers decide: CeresDB still runs 1.2.6.
        (
            ("1.2.7",),
            ("2.0.0", "horaedb", True),
            ("ceresdb 1.2.6",),
            [
                "cluster.flavor: cannot change from 'ceresdb' to 'horaedb': ceresdb 1.2.6 -> horaedb 2.0.0 skips a required step"
            ],
        ),
        (
            ("2.0.0", "horaedb", True),
            ("2.0.0", "horaedb"),
            (),
            ["cluster.keep_ceresdb_data: cannot change while the cluster runs"],
        ),
        # The file put back to CeresDB while the containers already run HoraeDB: the file's flavor
        # does not change, its version cannot be reached from what runs.
        (
            ("1.2.7",),
            ("1.2.7",),
            ("horaedb 2.0.0",),
            ["cluster.version: cannot upgrade: horaedb 2.0.0 -> ceresdb 1.2.7: no way back"],
        ),
    ],
)
def test_an_upgrade_follows_the_pair_table(
    tmp_path: Path, old: tuple, new: tuple, sources: tuple, expected: list[str]
) -> None:
    running = spec(tmp_path, at(THREE_META, *old), "running")
    changed = spec(tmp_path, at(THREE_META, *new), "new")
    problems = static_problems(running, changed, [r for r in map(parse_release, sources) if r])
    assert len(problems) == len(expected), problems
    for problem, text in zip(problems, expected, strict=True):
        assert f"{problem.path}: {problem.message}".startswith(text), problem


# --- the reloads: one for every request before the loop gets to them, each caller answered ---------


class Notified(systemd.Notifier):
    """What the daemon tells systemd, kept instead of sent (no NOTIFY_SOCKET here)."""

    def __init__(self) -> None:
        super().__init__({})
        self.sent: list[tuple[str, ...]] = []

    def send(self, *fields: str) -> None:
        self.sent.append(fields)


@dataclass
class Daemon:
    """A daemon's reloading parts on a real file and loop; `apply` keeps what it was handed."""

    path: Path
    loop: Loop
    reloads: Reloads
    notifier: Notified
    events: list[tuple[str | None, str, str | None, str]] = field(default_factory=list)
    applied: list[tuple[loading.Loaded, Reloaded]] = field(default_factory=list)


def daemon(
    tmp_path: Path,
    text: str = BASE,
    listen: str | None = None,
    sources: Iterable[str] = (),
    apply: Callable[[loading.Loaded, Reloaded], None] | None = None,
) -> Daemon:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    place = locality.decide(["127.0.0.1"], locality.Locality())
    loaded = loading.with_listen(loading.load(path), listen)
    desired = desired_mod.build(loaded.spec, secrets.resolve, place.is_local)
    setting = Setting(loaded, desired, place, planning.Policy.of(loaded.spec.supervisor))
    notifier = Notified()
    events: list[tuple[str | None, str, str | None, str]] = []
    # The loop's other parts (Docker, the store, the executor...): a reload touches none of them.
    none: Any = None
    parts = Parts(
        Observer(none, place),
        none,
        none,
        none,
        none,
        none,
        notifier,
        lambda *e: events.append(e),
        none,
        none,
        none,
    )
    loop = Loop(parts, setting, "agent-1")
    releases = [r for r in map(parse_release, sources) if r]
    d = Daemon(path, loop, none, notifier, events)
    d.reloads = Reloads(
        str(path),
        listen,
        loop,
        notifier,
        parts.record_event,
        lambda: releases,
        apply or (lambda loaded, new: d.applied.append((loaded, new))),
    )
    return d


async def reload(d: Daemon) -> tuple[Any, list[dict[str, Any]]]:
    """One request, run as the loop runs it at the top of a cycle: its answer and the log lines."""
    answer = d.reloads.request()
    due = d.reloads.due()
    assert due is not None
    with capture_logs() as logs:
        await due
    assert answer.done()
    return answer.result(), logs


async def test_requests_before_the_loop_gets_to_them_share_one_reload_and_every_caller_is_answered(
    tmp_path: Path,
) -> None:
    d = daemon(tmp_path)
    d.loop.last_plan = sample.healthy_plan(tmp_path)[1]
    assert d.reloads.due() is None  # nothing asked for yet
    d.path.write_text(BASE.replace("[cluster]\n", '[supervisor]\nlease_grace = "90s"\n\n[cluster]\n'))
    first, second, gone = d.reloads.request(), d.reloads.request(), d.reloads.request()
    assert d.loop.wake_event.is_set()  # the loop wakes to run it
    gone.cancel()  # a caller that stopped waiting (an API client that hung up)
    before = datetime.now(UTC)
    due = d.reloads.due()
    assert due is not None
    with capture_logs() as logs:
        await due
    assert d.reloads.due() is None  # one reload answered all three
    result = first.result()
    assert second.result() is result and gone.cancelled()
    assert result.ok is True and result.error is None
    assert result.at is not None and result.at.tzinfo is UTC and before <= result.at <= datetime.now(UTC)
    assert d.loop.reload_result is result and d.loop.snapshot.reload is result
    [(loaded, new)] = d.applied
    assert loaded.spec.supervisor.lease_grace == 90 and new.loaded.spec == loaded.spec
    assert d.events == [(None, "reloaded", None, f"spec {new.desired.spec_hash}")]
    assert [fields[0] for fields in d.notifier.sent] == ["RELOADING=1", "READY=1"]
    assert d.notifier.sent[-1] == ("READY=1", "STATUS=healthy: 3/3 nodes healthy")
    assert [(e["event"], e.get("spec_hash")) for e in logs] == [
        ("desired_state_reloaded", new.desired.spec_hash)
    ]


async def test_an_unchanged_file_is_reloaded_and_said_to_be_unchanged(tmp_path: Path) -> None:
    d = daemon(tmp_path)
    result, logs = await reload(d)
    assert result.ok and len(d.applied) == 1
    assert [e["event"] for e in logs] == ["desired_state_unchanged"]
    assert [e[1] for e in d.events] == ["reloaded"]


async def test_a_file_the_running_daemon_cannot_take_is_refused_and_nothing_is_applied(
    tmp_path: Path,
) -> None:
    d = daemon(tmp_path)
    d.path.write_text(BASE.replace("[cluster]\n", '[cluster]\nname = "other"\n'))
    before = datetime.now(UTC)
    result, logs = await reload(d)
    error = (
        f"{d.path}: invalid desired state (1 problem)\n  cluster.name: cannot change from 'defaultCluster' to "
        "'other' while the supervisor runs (nodes would start on other data); stop the daemon, move the data, "
        "start it again"
    )
    assert (result.ok, result.error) == (False, error)
    assert result.at is not None and result.at.tzinfo is UTC and before <= result.at <= datetime.now(UTC)
    assert d.loop.reload_result is result and d.loop.snapshot.reload is result
    assert d.applied == [] and d.loop.setting.spec.cluster.name == "defaultCluster"
    assert d.events == [(None, "reload_failed", error, "kept the last good desired state")]
    assert [(e["event"], e.get("error")) for e in logs] == [("reload_failed", error)]
    assert d.notifier.sent[-1] == ("READY=1", f"STATUS={d.loop.status_line(None)}")
    assert d.notifier.sent[-1][1].endswith("; reload failed: " + error.splitlines()[-1].strip())


async def test_a_host_that_cannot_be_resolved_refuses_the_reload_in_the_resolver_s_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new node's host is a name: whether it is this machine takes the resolver, which fails here
    (stood in for: no DNS in a unit test)."""

    def no_resolver(host: str, *args: object) -> object:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    d = daemon(tmp_path)
    d.path.write_text(BASE.replace('name = "db1"\nhost = "127.0.0.1"', 'name = "db1"\nhost = "db1.example"'))
    monkeypatch.setattr(socket, "getaddrinfo", no_resolver)
    result, _logs = await reload(d)
    assert (result.ok, result.error) == (
        False,
        "cannot resolve node host 'db1.example' (Name or service not known); the supervisor must know whether "
        "it is this machine (use an IP address, fix the resolver, or run with --host)",
    )
    assert d.applied == [] and d.events == [
        (None, "reload_failed", result.error, "kept the last good desired state")
    ]


async def test_a_reload_that_crashes_keeps_the_last_good_state_and_still_answers_and_tells_systemd(
    tmp_path: Path,
) -> None:
    def apply(loaded: loading.Loaded, new: Reloaded) -> None:
        raise RuntimeError("topology.json is corrupt")

    d = daemon(tmp_path, apply=apply)
    result, logs = await reload(d)
    error = "internal error while reloading: RuntimeError: topology.json is corrupt"
    assert (result.ok, result.error) == (False, error)
    assert d.loop.snapshot.reload is result
    assert d.events == [(None, "reload_failed", error, "kept the last good desired state")]
    assert [e["event"] for e in logs] == ["desired_state_unchanged", "reload_crashed", "reload_failed"]
    assert [fields[0] for fields in d.notifier.sent] == ["RELOADING=1", "READY=1"]


async def test_the_agent_s_own_listen_address_outlives_a_reload_and_a_new_token_file_waits_for_a_restart(
    tmp_path: Path,
) -> None:
    d = daemon(tmp_path, listen="127.0.0.1:5999")
    result, _logs = await reload(d)
    assert result.ok and d.applied[0][0].spec.supervisor.listen == "127.0.0.1:5999"
    assert [e[1] for e in d.events] == ["reloaded"]  # the same address: nothing waits for a restart

    d = daemon(tmp_path)
    d.path.write_text(
        BASE.replace("[cluster]\n", '[supervisor]\ntoken_file = "/etc/ceres/token"\n\n[cluster]\n')
    )
    result, logs = await reload(d)
    assert result.ok and d.applied[0][0].spec.supervisor.token_file == "/etc/ceres/token"
    assert d.events[0] == (
        None,
        "reload_partial",
        "supervisor.listen/token_file changed",
        "takes effect when the daemon restarts",
    )
    assert [e[1] for e in d.events] == ["reload_partial", "reloaded"]
    assert {k: v for k, v in logs[1].items() if k != "log_level"} == {
        "event": "reload_needs_restart",
        "keys": "supervisor.listen, supervisor.token_file",
        "detail": "the status API keeps its address and token until the daemon restarts",
    }


async def test_a_reload_is_judged_against_the_releases_the_containers_run(tmp_path: Path) -> None:
    """The file goes from 1.2.7 to HoraeDB 2.0.0 with the 1.x data kept, a pair the table allows;
    but a container still runs 1.2.6, from which HoraeDB is a step too far."""
    d = daemon(tmp_path, at(THREE_META, "1.2.7"), sources=["ceresdb 1.2.6"])
    d.path.write_text(at(THREE_META, "2.0.0", "horaedb", True))
    result, _logs = await reload(d)
    assert (
        not result.ok
        and "cluster.flavor: cannot change from 'ceresdb' to 'horaedb': ceresdb 1.2.6 -> "
        in (result.error or "")
    )
    assert d.applied == []
