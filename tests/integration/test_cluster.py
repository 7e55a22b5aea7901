"""Several machines, on one: three supervisors with `--host 127.0.0.1/2/3`, one file.

Three meta members (one per host) and six CeresDB nodes (two per host); every loopback address is
the same machine, so every port is distinct. Each agent runs as its own process, as systemd would
run it. The scenarios share one cluster and run in order (one xdist group); stops and starts are
read from Docker's own events.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ceres_supervisor.cli import commands
from testkit.dockerevents import DockerEvents
from testkit.helpers import free_ports, http_json, wait_until
from testkit.standins import FastTicks, emulator_hook, kill_main_process

from .conftest import FAST, Daemon

pytestmark = pytest.mark.xdist_group("several-machines")

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
AGENT_TTL_S = 5
ALL = ("meta0", "meta1", "meta2", "db0", "db1", "db2", "db3", "db4", "db5")


def cluster_file(name: str, state: Path, version: str = "1.2.7") -> str:
    ports = iter(free_ports(3 * 3 + 6 * 4))
    settings = {**FAST, "agent_ttl": f"{AGENT_TTL_S}s", "max_unavailable": 1, "listen": "127.0.0.1:1"}
    lines = ["[cluster]", f'name = "{name}"', f'state_dir = "{state}"', f'version = "{version}"', "",
             "[supervisor]"] + [f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}" for k, v in settings.items()]
    lines += ["", "[meta]", f'image = "ceres-emulator/ceresmeta-server:{version}"', "",
              "[ceresdb]", f'image = "ceres-emulator/ceresdb-server:{version}"', "shard_lock_ttl = 15", ""]
    for i, host in enumerate(HOSTS):
        lines += ["[[meta.nodes]]", f'name = "meta{i}"', f'host = "{host}"', f"client_port = {next(ports)}",
                  f"peer_port = {next(ports)}", f"http_port = {next(ports)}", ""]
    for i in range(6):
        lines += ["[[ceresdb.nodes]]", f'name = "db{i}"', f'host = "{HOSTS[i // 2]}"', f"grpc_port = {next(ports)}",
                  f"http_port = {next(ports)}", f"mysql_port = {next(ports)}", f"postgresql_port = {next(ports)}", ""]
    return "\n".join(lines)


@dataclass
class Machines:
    client: docker.DockerClient
    name: str
    root: Path
    agents: dict[str, Daemon]

    @property
    def config(self) -> Path:
        return self.root / "cluster.toml"

    def agent(self, i: int) -> Daemon:
        return self.agents[HOSTS[i]]

    def cluster(self, i: int) -> dict[str, object] | None:
        code, doc = self.agent(i).get("/v1/cluster")
        return doc if code == 200 and isinstance(doc, dict) else None

    def states(self, i: int) -> dict[str, str]:
        doc = self.cluster(i)
        return {n["name"]: n["state"] for n in doc["nodes"]} if doc else {}  # type: ignore[index]

    def healthy_everywhere(self) -> bool:
        for i in range(3):
            doc = self.cluster(i)
            if doc is None or doc["cluster"]["state"] != "healthy":  # type: ignore[index]
                return False
            if len([a for a in doc["agents"] if a["state"] == "up"]) != 3:  # type: ignore[union-attr,index]
                return False
        return True

    def wait_healthy(self, timeout_s: float = 180) -> None:
        try:
            wait_until(self.healthy_everywhere, timeout_s, "every agent seeing the whole cluster healthy", 0.5)
        except AssertionError as err:
            seen = []
            for i in range(3):
                try:
                    seen.append(self.states(i))
                except OSError as why:
                    seen.append({"unreachable": str(why)})
            raise AssertionError(f"{err}; states per agent: {seen}") from None

    def container(self, node: str) -> docker.models.containers.Container:
        return self.client.containers.get(f"ceres-{self.name}-{node}")

    def identities(self) -> dict[str, tuple[str, str]]:
        return {c.labels["io.ceres-supervisor.node"]: (c.id, c.attrs["State"]["StartedAt"]) for c in
                self.client.containers.list(all=True, filters={"label": f"io.ceres-supervisor.cluster={self.name}"})}

    def start_agent(self, host: str, port: int) -> Daemon:
        daemon = Daemon(self.config, self.root / f"agent-{host}.log", host=host)
        daemon.listen = f"{host}:{port}"
        self.agents[host] = daemon.start()
        return daemon

    def fault(self, node: str, *args: str) -> None:
        emulator_hook(self.container(node), *args)


@pytest.fixture(scope="module")
def machines(docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machines]:
    name = f"m{uuid.uuid4().hex[:8]}"
    root = tmp_path_factory.mktemp(name)
    m = Machines(docker_client, name, root, {})
    m.config.write_text(cluster_file(name, root / "state"))
    ports = free_ports(3)
    ticks = FastTicks(docker_client, name).__enter__()
    try:
        for host, port in zip(HOSTS, ports, strict=True):
            m.start_agent(host, port)
        m.wait_healthy(240)
        yield m
    finally:
        ticks.__exit__()
        for daemon in m.agents.values():
            daemon.stop()
        for c in docker_client.containers.list(all=True, filters={"label": f"io.ceres-supervisor.cluster={name}"}):
            c.remove(force=True)


def test_every_agent_sees_all_nine_nodes_healthy_and_three_agents_up(machines: Machines) -> None:
    for i in range(3):
        doc = machines.cluster(i)
        assert doc is not None
        assert [n["name"] for n in doc["nodes"]] == list(ALL)  # type: ignore[index]
        assert {n["name"]: n["agent"] for n in doc["nodes"]} == {  # type: ignore[index]
            "meta0": HOSTS[0], "meta1": HOSTS[1], "meta2": HOSTS[2], "db0": HOSTS[0], "db1": HOSTS[0],
            "db2": HOSTS[1], "db3": HOSTS[1], "db4": HOSTS[2], "db5": HOSTS[2]}
        assert doc["coordination"]["ok"] is True  # type: ignore[index]
    # Each agent owns exactly its host's containers.
    owners = {c.labels["io.ceres-supervisor.node"]: c.labels["io.ceres-supervisor.host"] for c in
              machines.client.containers.list(filters={"label": f"io.ceres-supervisor.cluster={machines.name}"})}
    assert owners == {"meta0": HOSTS[0], "meta1": HOSTS[1], "meta2": HOSTS[2], "db0": HOSTS[0], "db1": HOSTS[0],
                      "db2": HOSTS[1], "db3": HOSTS[1], "db4": HOSTS[2], "db5": HOSTS[2]}
    # `status` prints the whole cluster, with the HOST column, from any machine.
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert commands.main(["status", "--url", machines.agent(2).url]) == 0
    assert "cluster " + machines.name + ": healthy" in out.getvalue()
    assert all(f"db{i}" in out.getvalue() for i in range(6))


def cli(*argv: str) -> tuple[int, str, str]:
    """The command line, in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = commands.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def test_events_logs_and_describe_reach_a_node_on_another_agent(machines: Machines) -> None:
    """Asked of agent 1, about db4, which agent 3 runs."""
    url = machines.agent(0).url
    code, out, err = cli("events", "--url", url, "--node", "db4", "--json", "-n", "1000")
    events = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and err == "", err
    others = [e for e in events if e["agent"] != HOSTS[2]]
    assert events and not others and {e["node"] for e in events} == {"db4"}, others
    assert any(e["type"] == "state" and e["message"].endswith("healthy") for e in events), events
    code, out, _err = cli("events", "--url", url, "--json", "-n", "1000")
    assert code == 0 and {json.loads(line)["agent"] for line in out.splitlines()} == set(HOSTS)
    code, out, err = cli("logs", "db4", "--url", url, "-n", "5", "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and 1 <= len(lines) <= 5 and all(line["node"] == "db4" and line["at"] for line in lines), err
    code, out, err = cli("describe", "db4", "--url", url, "--json")
    doc = json.loads(out)
    assert code == 0, err
    assert doc["source"] == {"agent": HOSTS[2], "complete": True, "error": None}
    assert doc["container"]["id"] == machines.container("db4").id and doc["state"] == "healthy"
    assert doc["config_path"] == str(machines.root / "state" / "config" / "db4" / "ceresdb.toml")
    assert doc["history"] and doc["logs"] is None  # healthy: no log lines needed
    code, out, _err = cli("describe", "db4", "--url", url)
    assert code == 0 and out.startswith(f"node db4 (ceresdb) on {HOSTS[2]}, run by the supervisor on {HOSTS[2]}")
    # The supervisor set the container's log rotation.
    assert machines.container("db4").attrs["HostConfig"]["LogConfig"] == {
        "Type": "json-file", "Config": {"max-size": "20m", "max-file": "5"}}
    # Every agent exports its own nodes, labelled with the cluster and their host; every agent up.
    samples = scrape(url)
    states = {labels["node"]: labels for labels, v in samples["ceres_supervisor_node_state"] if v == 1}
    assert set(states) == {"meta0", "db0", "db1"}
    assert all(labels["cluster"] == machines.name and labels["host"] == HOSTS[0] for labels in states.values())
    assert {labels["host"]: v for labels, v in samples["ceres_supervisor_agent_up"]} == dict.fromkeys(HOSTS, 1.0)
    assert [v for _labels, v in samples["ceres_supervisor_coordination_up"]] == [1.0]
    assert sum(v for _labels, v in samples["ceres_supervisor_meta_leader"]) == 1


class Watcher:
    """Polls the agents' /v1/cluster in a thread and keeps each node's successive states."""

    def __init__(self, machines: Machines, agents: tuple[int, ...], node: str) -> None:
        self.machines, self.agents, self.node = machines, agents, node
        self.seen: dict[int, list[str]] = {i: [] for i in agents}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            for i in self.agents:
                state = self.machines.states(i).get(self.node)
                if state and (not self.seen[i] or self.seen[i][-1] != state):
                    self.seen[i].append(state)
            time.sleep(0.05)

    def __enter__(self) -> Watcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def agent_events(daemon: Daemon, node: str, kind: str) -> list[dict[str, object]]:
    _code, events = daemon.get("/v1/events?limit=1000")
    return [e for e in events if e["node"] == node and e["type"] == kind]  # type: ignore[union-attr,index]


def test_a_crash_on_host_2_is_restarted_by_agent_2_only(machines: Machines) -> None:
    with Watcher(machines, (0, 2), "db2") as watcher:
        kill_main_process(machines.container("db2"))
        wait_until(lambda: agent_events(machines.agent(1), "db2", "start"), 30, "agent 2 starting db2 again")
        machines.wait_healthy()
        wait_until(lambda: all(seen and seen[-1] == "healthy" and len(seen) > 1 for seen in watcher.seen.values()),
                   30, f"agents 1 and 3 seeing db2 leave healthy and come back ({watcher.seen})")
    assert not agent_events(machines.agent(0), "db2", "start") and not agent_events(machines.agent(2), "db2", "start")
    for i in (0, 2):
        assert watcher.seen[i][0] == "healthy" and any(s != "healthy" for s in watcher.seen[i]), watcher.seen
    # Agent 2's metrics: the exit it did not cause, and the restart, on db2's host.
    samples = scrape(machines.agent(1).url)
    exits = {labels["node"]: (labels["host"], v) for labels, v in samples["ceres_supervisor_node_last_exit_code"]}
    assert exits["db2"] == (HOSTS[1], 137.0), exits
    died = [v for labels, v in samples["ceres_supervisor_restarts_total"]
            if labels["node"] == "db2" and labels["reason"] == "died" and labels["cluster"] == machines.name]
    assert died and died[0] >= 1


def test_two_failing_nodes_on_two_hosts_are_stopped_one_after_the_other(machines: Machines) -> None:
    def slot_held() -> list[tuple[str, float]]:
        return [(labels["node"], v) for i in (0, 2) for labels, v in
                scrape(machines.agent(i).url).get("ceres_supervisor_disruption_slot_held_seconds", [])]

    with DockerEvents(machines.client, machines.name) as events:
        machines.fault("db0", "freeze-http")  # host 1
        machines.fault("db4", "freeze-http")  # host 3, at the same moment
        held = wait_until(slot_held, 180, "a disruption slot in the metrics while a node is stopped by choice", 0.2)
        assert {node for node, _ in held} <= {"db0", "db4"} and all(v >= 0 for _, v in held), held
        wait_until(lambda: len(events.chosen_stops("db0")) == 1 and len(events.chosen_stops("db4")) == 1, 180,
                   "both stopped by their agents")
        machines.wait_healthy()
        most, intervals = events.most_down_at_once("ceresdb")
    assert most == 1, intervals
    assert {e.host for e in events.chosen_stops()} == {HOSTS[0], HOSTS[2]}
    failed = {labels["node"]: v for labels, v in scrape(machines.agent(0).url)["ceres_supervisor_probe_failures_total"]}
    assert failed.get("db0", 0) >= 3, failed  # failure_threshold failed probes before it was stopped


def test_a_killed_agent_is_seen_down_its_nodes_hold_the_budget_and_it_adopts_them(machines: Machines) -> None:
    before = machines.identities()
    agent = machines.agent(1)
    assert agent.process is not None
    killed = time.monotonic()
    os.kill(agent.process.pid, signal.SIGKILL)
    agent.wait(10)
    mine = ("meta1", "db2", "db3")

    def seen_down(i: int) -> bool:
        doc = machines.cluster(i)
        if doc is None:
            return False
        nodes = {n["name"]: n for n in doc["nodes"]}  # type: ignore[index]
        down = {a["host"] for a in doc["agents"] if a["state"] == "down"}  # type: ignore[union-attr,index]
        return HOSTS[1] in down and all(nodes[n]["state"] == "unknown" and
                                        nodes[n]["reason"].startswith(f"supervisor on {HOSTS[1]} down since")
                                        for n in mine)

    wait_until(lambda: seen_down(0) and seen_down(2), AGENT_TTL_S + 10, "agents 1 and 3 seeing agent 2 down")
    assert time.monotonic() - killed <= AGENT_TTL_S + 1 + 2, "later than agent_ttl + 1 s (2 s for the polling)"
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert commands.main(["status", "--url", machines.agent(0).url]) == 1
    assert f"agent {HOSTS[1]} DOWN since" in out.getvalue()
    assert all(machines.container(n).status == "running" for n in mine)
    # The lost machine on the other agents' metrics and tools: its agent down, its nodes unknown.
    samples = scrape(machines.agent(0).url)
    assert {labels["host"]: v for labels, v in samples["ceres_supervisor_agent_up"]}[HOSTS[1]] == 0
    unknown = {labels["node"] for labels, v in samples["ceres_supervisor_node_state"]
               if labels["state"] == "unknown" and v == 1}
    assert unknown == set(mine) and all(labels["host"] == HOSTS[1] for labels, v in samples["ceres_supervisor_node_state"]
                                        if labels["node"] in mine)
    code, out, _err = cli("describe", "db2", "--url", machines.agent(0).url, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["state"] == "unknown" and doc["source"]["complete"] is False
    assert doc["source"]["error"].startswith(f"the supervisor on {HOSTS[1]} is down since"), doc["source"]
    code, _out, err = cli("logs", "db2", "--url", machines.agent(0).url)
    assert code == 3 and err.startswith(f"error: cannot read the logs of db2: the supervisor on {HOSTS[1]} is down")
    code, _out, err = cli("events", "--url", machines.agent(0).url, "-n", "1")
    assert code == 0 and f"note: no events from {HOSTS[1]}: down since" in err

    # Nobody knows whether db2 and db3 serve: a failing db0 on host 1 is held back, not stopped.
    def db0_reason() -> str:
        doc = machines.cluster(0)
        node = next((n for n in doc["nodes"] if n["name"] == "db0"), {}) if doc else {}  # type: ignore[union-attr]
        return str(node.get("reason") or "")  # type: ignore[union-attr]

    with DockerEvents(machines.client, machines.name) as events:
        machines.fault("db0", "freeze-http")
        wait_until(lambda: "waiting for disruption budget" in db0_reason() and "db2 (unknown" in db0_reason(), 60,
                   "db0 held back by the budget while agent 2 is down")
        assert events.chosen_stops() == []
        machines.start_agent(HOSTS[1], int(agent.listen.rsplit(":", 1)[1]))
        wait_until(lambda: len(events.chosen_stops("db0")) == 1, 90, "db0 stopped once agent 2 publishes again")
        machines.wait_healthy()
        assert [e.node for e in events.chosen_stops()] == ["db0"] and {e.host for e in events.chosen_stops()} == {HOSTS[0]}
    after = machines.identities()
    assert {n: v for n, v in after.items() if n != "db0"} == {n: v for n, v in before.items() if n != "db0"}, \
        "the returning agent restarted something"


def test_a_rolling_change_goes_meta_first_one_node_at_a_time_cluster_wide(machines: Machines) -> None:
    before = machines.identities()
    text = machines.config.read_text()
    changed = text.replace("[meta]\n", "[meta]\nconfig = { lease-sec = 11 }\n", 1)
    changed = changed.replace("[ceresdb]\n", '[ceresdb]\nconfig = { logger = { level = "debug" } }\n', 1)
    machines.config.write_text(changed)
    with DockerEvents(machines.client, machines.name) as events:
        for i in (2, 0, 1):  # every agent, in any order
            code, body = http_json(machines.agent(i).url + "/v1/reload", {}, timeout_s=60)
            assert code == 200, body
        wait_until(lambda: {e.node for e in events.of(actions=("destroy",))} == set(ALL), 600,
                   "every node recreated", 1.0)
        machines.wait_healthy(240)
        recreated = [e.node for e in events.of(actions=("destroy",))]
        most, intervals = events.most_down_at_once()
    assert sorted(recreated) == sorted(ALL) and len(recreated) == 9, recreated
    for i in range(3):
        samples = scrape(machines.agent(i).url)
        assert [v for _l, v in samples["ceres_supervisor_reload_success"]] == [1.0]
        assert [labels["host"] for labels, _v in samples["ceres_supervisor_last_reload_timestamp_seconds"]] == [HOSTS[i]]
        assert [v for _l, v in samples["ceres_supervisor_spec_hashes_differ"]] == [0.0]
    assert set(recreated[:3]) == {"meta0", "meta1", "meta2"}, f"meta first: {recreated}"
    assert most == 1, intervals
    after = machines.identities()
    assert all(after[n][0] != before[n][0] for n in ALL)


def test_without_quorum_nothing_is_stopped_by_choice_and_crashes_wait_for_meta(machines: Machines) -> None:
    with DockerEvents(machines.client, machines.name) as events:
        for node in ("meta1", "meta2"):
            machines.container(node).pause()  # two of three: the store has no quorum
        try:
            def unavailable(i: int) -> bool:
                code, doc = machines.agent(i).get("/v1/cluster")
                return code == 503 and doc["coordination"]["ok"] is False  # type: ignore[index]

            wait_until(lambda: all(unavailable(i) for i in range(3)), 60, "every agent saying coordination unavailable")
            with contextlib.redirect_stdout(io.StringIO()) as out:
                assert commands.main(["status", "--url", machines.agent(0).url]) == 1
            assert "coordination unavailable" in out.getvalue()
            kill_main_process(machines.container("db1"))  # a crash meanwhile
            time.sleep(3 * 1.0)  # a window, not a wait: three probe intervals in which no stop may happen
            assert events.chosen_stops() == [], events.chosen_stops()
        finally:
            for node in ("meta1", "meta2"):
                with contextlib.suppress(docker.errors.APIError):
                    machines.container(node).unpause()
        machines.wait_healthy(240)
        starts = events.of("db1", ("start",))
    assert starts, "the crashed db1 was not started again"
