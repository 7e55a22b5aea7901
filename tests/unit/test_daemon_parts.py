"""The daemon's small parts, for real: sd_notify over a real datagram socket (adapters/systemd.py),
signals sent to this process and the stages of a stop (daemon/shutdown.py), what to probe next
(decisions/targets.py), the log configuration and the entry point."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import structlog

from ceres_supervisor import __main__ as entry
from ceres_supervisor.actions.executor import Executor
from ceres_supervisor.adapters import logs, systemd
from ceres_supervisor.daemon import shutdown
from ceres_supervisor.decisions.planning import NodeState, NodeView
from ceres_supervisor.decisions.targets import Target, probe_targets
from ceres_supervisor.model.observed import ObservedContainer

from .scenes import META3, build, healthy
from .test_executor import FakeEngine

# --- sd_notify -------------------------------------------------------------------------------------------


class Systemd:
    """The receiving end of NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)

    def received(self) -> list[str]:
        got = []
        with contextlib.suppress(BlockingIOError):
            while True:
                got.append(self.sock.recv(4096).decode())
        return got


@pytest.fixture
def systemd_socket(tmp_path: Path) -> Iterator[tuple[Systemd, str]]:
    path = tmp_path / "notify"
    receiver = Systemd(path)
    yield receiver, str(path)
    receiver.sock.close()


def test_the_daemon_tells_systemd_ready_reloading_status_stopping(
    systemd_socket: tuple[Systemd, str],
) -> None:
    receiver, path = systemd_socket
    notifier = systemd.Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled and notifier.watchdog_interval_s is None
    notifier.ready("healthy: 3/3 nodes healthy")
    notifier.status("healthy: 3/3 nodes healthy")  # unchanged: not sent again
    notifier.status("degraded:\n1/3")
    notifier.reloading()
    notifier.ready()
    notifier.stopping()
    notifier.watchdog()  # no watchdog asked: nothing
    got = receiver.received()
    assert got[:2] == ["READY=1\nSTATUS=healthy: 3/3 nodes healthy", "STATUS=degraded: 1/3"]
    assert got[2].startswith("RELOADING=1\nMONOTONIC_USEC=") and int(got[2].split("=")[-1]) > 0
    assert got[3:] == ["READY=1", "STOPPING=1"]


def test_the_watchdog_is_fed_at_most_twice_per_half_interval(systemd_socket: tuple[Systemd, str]) -> None:
    receiver, path = systemd_socket
    notifier = systemd.Notifier(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}
    )
    assert notifier.watchdog_interval_s == 10.0
    notifier.watchdog()
    notifier.watchdog()  # within 5 s of the last one: throttled
    assert receiver.received() == ["WATCHDOG=1"]


@pytest.mark.parametrize(
    ("environ", "address", "interval"),
    [
        ({}, None, None),
        ({"NOTIFY_SOCKET": "@abstract"}, "\0abstract", None),
        ({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}, "/run/x", None),
        ({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "4000000"}, "/run/x", 2.0),
        ({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "soon"}, "/run/x", None),
    ],
)
def test_what_systemd_asked_for_is_read_from_the_environment(
    environ: dict[str, str], address: str | None, interval: float | None
) -> None:
    notifier = systemd.Notifier(environ)
    assert (notifier.address, notifier.watchdog_interval_s) == (address, interval)


def test_a_notification_that_cannot_be_sent_never_raises(tmp_path: Path) -> None:
    notifier = systemd.Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    notifier.ready("x")  # logged, not raised
    systemd.Notifier({}).ready("x")  # outside systemd: nothing at all


# --- signals and the stop -------------------------------------------------------------------------------------


def test_the_deadline_counts_down_and_never_below_zero() -> None:
    deadline = shutdown.Deadline(60.0)
    assert 59.0 < deadline.left() <= 60.0 and 49.0 < deadline.left(10.0) <= 50.0
    assert deadline.left(100.0) == 0.0 and shutdown.Deadline(-1).left() == 0.0
    assert shutdown.stop_deadline_s(30.0) == 80.0


async def test_signals_sent_to_the_process_ask_for_a_stop_or_a_reload() -> None:
    asked: list[str] = []
    stopped = asyncio.Event()

    def stop() -> None:
        asked.append("stop")
        stopped.set()

    signals = shutdown.Signals(stop, lambda: asked.append("reload"), lambda: 42.0)
    signals.install()
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGTERM)
        async with asyncio.timeout(10):
            await stopped.wait()
    finally:
        signals.remove()
    assert asked == ["reload", "stop"] and signals.count == 1
    assert signals.deadline is not None and 40.0 < signals.deadline.left() <= 42.0
    first = signals.deadline
    signals.stop()  # a second stop (the API's) keeps the first deadline
    assert signals.count == 2 and signals.deadline is first


class Api:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls
        self.closed = asyncio.Event()

    async def serve_forever(self) -> None:
        await asyncio.Event().wait()

    async def close(self) -> None:
        self.calls.append("api closed")
        self.closed.set()


async def test_the_first_stages_of_a_stop_run_in_order_and_tear_the_group_down(
    systemd_socket: tuple[Systemd, str],
) -> None:
    receiver, path = systemd_socket
    calls: list[str] = []
    stop = asyncio.Event()
    signals = shutdown.Signals(stop.set, lambda: None, lambda: 30.0)
    actions = Executor(FakeEngine(), 1.0, lambda _o: None)  # type: ignore[arg-type]
    actions.busy = {"db0": "stop"}  # an action in flight: it is given the time left, then cut short
    actions._idle.clear()

    api = Api(calls)

    async def the_loop() -> None:  # the cycle in progress when the stop came: it finishes
        await api.closed.wait()
        calls.append("last cycle")

    loop_task = asyncio.ensure_future(the_loop())

    async def close_store() -> None:
        calls.append("store closed")

    stages = asyncio.ensure_future(
        shutdown.first_stages(
            stop, signals, systemd.Notifier({"NOTIFY_SOCKET": path}), api, lambda: loop_task,
            actions, close_store, lambda: 27.8,
        )
    )  # fmt: skip
    signals.stop()
    with pytest.raises(shutdown.ShutdownRequested):
        async with asyncio.timeout(10):
            await stages
    assert calls == ["api closed", "last cycle", "store closed"]
    assert actions.closing and actions.busy == {"db0": "stop"}  # cut short after the time left
    assert receiver.received() == ["STOPPING=1"]


def observed(cid: str, node: str, role: str) -> ObservedContainer:
    return ObservedContainer(cid, f"ceres-c-{node}", node, role, "h", "running", "img")


@pytest.mark.parametrize("fails", [False, True])
async def test_on_exit_stop_stops_ceresdb_then_meta_within_the_deadline(
    systemd_socket: tuple[Systemd, str], fails: bool
) -> None:
    receiver, path = systemd_socket
    engine = FakeEngine()
    listed = [observed("m0", "meta0", "meta"), observed("d0", "db0", "ceresdb")]

    async def containers() -> list[ObservedContainer]:
        if fails:
            from ceres_supervisor.adapters.engine import EngineUnavailable  # noqa: PLC0415

            raise EngineUnavailable("Docker Engine unavailable")
        return listed

    await shutdown.stop_cluster(
        engine,  # type: ignore[arg-type]
        containers,
        systemd.Notifier({"NOTIFY_SOCKET": path}),
        shutdown.Deadline(20),
        30.0,
    )
    assert receiver.received() == ["STATUS=stopping the cluster"]
    assert engine.calls == ([] if fails else [("stop_all", "d0"), ("stop_all", "m0")])


# --- what to probe next -----------------------------------------------------------------------------------


def test_probes_are_fast_while_something_starts_or_waits_for_its_shards(tmp_path: Path) -> None:
    desired = build(tmp_path, META3)
    obs, plan = healthy(desired)
    steady = probe_targets(desired, plan, obs.containers)
    assert [t for t in steady if t.fast] == []
    assert [(t.kind, t.key) for t in steady] == [("leader", "leader"), ("leases", "leases")] + [
        ("meta", m) for m in ("meta0", "meta1", "meta2")
    ] + [("ceresdb", d) for d in ("db0", "db1", "db2")]
    assert {t.run_id for t in steady if t.kind == "ceresdb"} == {
        obs.containers[d].run_key for d in ("db0", "db1", "db2")
    }
    views = {
        **plan.views,
        "db1": NodeView(NodeState.REOPENING, "w"),
        "db2": NodeView(NodeState.STARTING, None),
    }
    waiting = probe_targets(desired, replace(plan, views=views, meta_ready=False), obs.containers)
    fast = {t.key for t in waiting if t.fast}
    assert fast == {"leader", "leases", "meta0", "meta1", "meta2", "db2"}
    stopped = {**obs.containers, "db0": replace(obs.containers["db0"], state="exited")}
    assert "db0" not in {t.key for t in probe_targets(desired, plan, stopped)}


def test_another_machine_s_meta_member_is_probed_and_its_ceresdb_nodes_are_not(tmp_path: Path) -> None:
    remote = build(tmp_path, META3, local=False)
    _obs, plan = healthy(remote)
    targets = probe_targets(remote, plan, {})
    assert [(t.kind, t.key, t.run_id) for t in targets if t.kind in ("meta", "ceresdb")] == [
        ("meta", m, "") for m in ("meta0", "meta1", "meta2")
    ]
    assert targets[0] == Target("leader", "leader", fast=False)


# --- logs and the entry point ---------------------------------------------------------------------------


@pytest.mark.parametrize(("json_lines", "level"), [(True, "info"), (False, "warning")])
def test_logs_are_json_lines_or_console_text_with_the_level_asked(json_lines: bool, level: str) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        logs.configure(level, json=json_lines)
        structlog.get_logger("t").info("container_started", node="db0")
        structlog.get_logger("t").warning("node_failed", node="db1")
    lines = err.getvalue().splitlines()
    if json_lines:
        assert [json.loads(line)["event"] for line in lines] == ["container_started", "node_failed"]
    else:
        assert len(lines) == 1 and "node_failed" in lines[0] and "node=db1" in lines[0]


def test_the_entry_point_exits_with_the_command_s_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["ceres-supervisor", "completion", "bash"])
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as exited:
        entry.main()
    assert exited.value.code == 0


def test_a_receiver_that_does_not_read_never_blocks_the_daemon(systemd_socket: tuple[Systemd, str]) -> None:
    """A unix datagram socket queues ten messages (net.unix.max_dgram_qlen); past them a blocking
    send waits until the receiver reads, and the daemon's event loop with it. A notification that
    cannot be sent now is dropped and logged instead."""
    receiver, path = systemd_socket
    notifier = systemd.Notifier({"NOTIFY_SOCKET": path})
    done = threading.Event()

    def flood() -> None:
        for i in range(64):
            notifier.status(f"cycle {i}")
        done.set()

    threading.Thread(target=flood, daemon=True).start()
    assert done.wait(10), "sd_notify blocked on a receiver that does not read"
    assert 0 < len(receiver.received()) < 64
