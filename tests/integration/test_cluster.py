"""Several machines that fail apart, on this one: three agents (`--host 127.0.0.1/2/3`, one file),
each with a Docker Engine of its own (testkit/machines.py), so that one machine's Docker can hang
or restart while the others run; agent 3 talks to the etcd members through proxies
(testkit/proxy.py), so that it can be cut from one member or from all of them.

Three meta members (one per host) and six CeresDB nodes (two per host); every loopback address is
the same machine, so every port is distinct. Each agent runs as its own process, as systemd would
run it. The scenarios share one cluster and run in order (one xdist group); every stop and start
is read from the three engines' own events, never from the supervisors' logs.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import threading
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
from testkit.machines import Engine, Engines
from testkit.proxy import Proxy
from testkit.standins import IMAGE_PREFIX, FastTicks, emulator_hook, kill_main_process

from .conftest import FAST, Daemon

pytestmark = pytest.mark.xdist_group("several-machines")

VERSION = "1.2.7"
HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
AGENT_TTL_S = 5
ALL = ("meta0", "meta1", "meta2", "db0", "db1", "db2", "db3", "db4", "db5")
OWNER = {"meta0": 0, "meta1": 1, "meta2": 2, "db0": 0, "db1": 0, "db2": 1, "db3": 1, "db4": 2, "db5": 2}


def cluster_file(name: str, state: Path, ports: list[int]) -> str:
    free = iter(ports)
    settings = {**FAST, "agent_ttl": f"{AGENT_TTL_S}s", "max_unavailable": 1, "listen": "127.0.0.1:1"}
    lines = [
        "[cluster]",
        f'name = "{name}"',
        f'state_dir = "{state}"',
        f'version = "{VERSION}"',
        "",
        "[supervisor]",
    ] + [f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}" for k, v in settings.items()]
    lines += [
        "",
        "[meta]",
        f'image = "{IMAGE_PREFIX}/ceresmeta-server:{VERSION}"',
        "",
        "[ceresdb]",
        f'image = "{IMAGE_PREFIX}/ceresdb-server:{VERSION}"',
        "shard_lock_ttl = 15",
        "",
    ]
    for i, host in enumerate(HOSTS):
        lines += [
            "[[meta.nodes]]",
            f'name = "meta{i}"',
            f'host = "{host}"',
            f"client_port = {next(free)}",
            f"peer_port = {next(free)}",
            f"http_port = {next(free)}",
            "",
        ]
    for i in range(6):
        lines += [
            "[[ceresdb.nodes]]",
            f'name = "db{i}"',
            f'host = "{HOSTS[i // 2]}"',
            f"grpc_port = {next(free)}",
            f"http_port = {next(free)}",
            f"mysql_port = {next(free)}",
            f"postgresql_port = {next(free)}",
            "",
        ]
    return "\n".join(lines)


@dataclass
class Machines:
    name: str
    root: Path
    engines: list[Engine]
    proxies: list[Proxy]
    """Agent 3's way to each meta member's client port."""
    client_ports: list[int]
    agents: dict[str, Daemon]

    @property
    def config(self) -> Path:
        return self.root / "cluster.toml"

    def agent(self, i: int) -> Daemon:
        return self.agents[HOSTS[i]]

    def cluster(self, i: int) -> dict[str, object] | None:
        try:
            code, doc = self.agent(i).get("/v1/cluster")
        except OSError:
            return None
        return doc if code in (200, 503) and isinstance(doc, dict) else None

    def nodes(self, i: int) -> dict[str, dict[str, object]]:
        doc = self.cluster(i)
        return {n["name"]: n for n in doc["nodes"]} if doc else {}  # type: ignore[index]

    def states(self, i: int) -> dict[str, str]:
        return {name: str(n["state"]) for name, n in self.nodes(i).items()}

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
            wait_until(
                self.healthy_everywhere, timeout_s, "every agent seeing the whole cluster healthy", 0.5
            )
        except AssertionError as err:
            raise AssertionError(f"{err}\n{self.describe()}") from None

    def describe(self) -> str:
        """What each agent sees and last logged: what a failed wait shows (a wait that ends by a
        deadline says why the cluster did not get there, not only that it did not)."""
        lines = []
        for i in range(3):
            doc = self.cluster(i) or {}
            coordination = doc.get("coordination")
            lines.append(f"agent {HOSTS[i]}: cluster {doc.get('cluster')}, coordination {coordination}")
            for name, node in self.nodes(i).items():
                lines.append(
                    f"  {name}: {node.get('state')} {node.get('reason') or ''} lease={node.get('lease')}"
                )
            log = self.agent(i).log
            tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
            lines.extend(f"  | {line[:300]}" for line in tail)
        return "\n".join(lines)

    def client(self, node: str) -> docker.DockerClient:
        return self.engines[OWNER[node]].client

    def container(self, node: str) -> docker.models.containers.Container:
        return self.client(node).containers.get(f"ceres-{self.name}-{node}")

    def identities(self) -> dict[str, tuple[str, str]]:
        found = {}
        for engine in self.engines:
            for c in engine.client.containers.list(
                all=True, filters={"label": f"io.ceres-supervisor.cluster={self.name}"}
            ):
                found[c.labels["io.ceres-supervisor.node"]] = (c.id, c.attrs["State"]["StartedAt"])
        return found

    def events(self) -> DockerEvents:
        return DockerEvents(self.engines[0].client, self.name, tuple(e.client for e in self.engines[1:]))

    def start_agent(self, i: int, port: int) -> Daemon:
        daemon = Daemon(self.config, self.root / f"agent-{HOSTS[i]}.log", host=HOSTS[i])
        daemon.listen = f"{HOSTS[i]}:{port}"
        daemon.docker_url = self.engines[i].url
        if i == 2:
            daemon.store = ",".join(f"http://{p.address}" for p in self.proxies)
        self.agents[HOSTS[i]] = daemon.start()
        return daemon

    def fault(self, node: str, *args: str) -> None:
        emulator_hook(self.container(node), *args)

    def reason(self, i: int, node: str) -> str:
        return str(self.nodes(i).get(node, {}).get("reason") or "")


@pytest.fixture(scope="module")
def machines(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Machines]:
    name = f"m{uuid.uuid4().hex[:8]}"
    root = tmp_path_factory.mktemp(name)
    ports = free_ports(3 * 3 + 6 * 4 + 3)
    client_ports = [ports[3 * i] for i in range(3)]
    with Engines(docker_client, versions=[VERSION]) as pool:
        engines = pool.start(3)
        proxies = [Proxy(HOSTS[i], client_ports[i], host="127.0.0.3").__enter__() for i in range(3)]
        ticks = [FastTicks(e.client, name).__enter__() for e in engines]
        m = Machines(name, root, engines, proxies, client_ports, {})
        m.config.write_text(cluster_file(name, root / "state", ports[: 3 * 3 + 6 * 4]))
        try:
            for i, port in enumerate(ports[-3:]):
                m.start_agent(i, port)
            m.wait_healthy(240)
            yield m
        finally:
            for tick in ticks:
                tick.__exit__()
            for daemon in m.agents.values():
                daemon.stop()
            for proxy in proxies:
                proxy.close()


def test_every_agent_sees_all_nine_nodes_healthy_and_three_agents_up(machines: Machines) -> None:
    for i in range(3):
        doc = machines.cluster(i)
        assert doc is not None
        assert [n["name"] for n in doc["nodes"]] == list(ALL)  # type: ignore[index]
        assert {n["name"]: n["agent"] for n in doc["nodes"]} == {n: HOSTS[o] for n, o in OWNER.items()}  # type: ignore[index]
        assert doc["coordination"]["ok"] is True and doc["coordination"]["age_s"] <= AGENT_TTL_S  # type: ignore[index]
        assert {a["host"]: a["advertise"] for a in doc["agents"]} == {  # type: ignore[union-attr,index]
            h: machines.agents[h].url for h in HOSTS
        }
    # Each agent owns exactly its machine's containers.
    for i, engine in enumerate(machines.engines):
        owned = {
            c.labels["io.ceres-supervisor.node"]: c.labels["io.ceres-supervisor.host"]
            for c in engine.client.containers.list(
                filters={"label": f"io.ceres-supervisor.cluster={machines.name}"}
            )
        }
        assert owned == {n: HOSTS[i] for n, o in OWNER.items() if o == i}
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
    assert (
        code == 0 and 1 <= len(lines) <= 5 and all(line["node"] == "db4" and line["at"] for line in lines)
    ), err
    code, out, err = cli("describe", "db4", "--url", url, "--json")
    doc = json.loads(out)
    assert code == 0, err
    assert doc["source"] == {"agent": HOSTS[2], "complete": True, "error": None}
    assert doc["container"]["id"] == machines.container("db4").id and doc["state"] == "healthy"
    assert doc["config_path"] == str(machines.root / "state" / "config" / "db4" / "ceresdb.toml")
    assert doc["history"] and doc["logs"] is None  # healthy: no log lines needed
    code, out, _err = cli("describe", "db4", "--url", url)
    assert code == 0 and out.startswith(
        f"node db4 (ceresdb) on {HOSTS[2]}, run by the supervisor on {HOSTS[2]}"
    )
    # The supervisor set the container's log rotation.
    assert machines.container("db4").attrs["HostConfig"]["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-size": "20m", "max-file": "5"},
    }
    # Every agent exports its own nodes, labelled with the cluster and their host; every agent up.
    samples = scrape(url)
    states = {labels["node"]: labels for labels, v in samples["ceres_supervisor_node_state"] if v == 1}
    assert set(states) == {"meta0", "db0", "db1"}
    assert all(
        labels["cluster"] == machines.name and labels["host"] == HOSTS[0] for labels in states.values()
    )
    assert {labels["host"]: v for labels, v in samples["ceres_supervisor_agent_up"]} == dict.fromkeys(
        HOSTS, 1.0
    )
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
            self.stop.wait(0.05)

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
    with Watcher(machines, (0, 2), "db2") as watcher, machines.events() as events:
        kill_main_process(machines.container("db2"))
        events.wait_for("db2 started again", 30, "db2")
        machines.wait_healthy()
        wait_until(
            lambda: all(seen and seen[-1] == "healthy" and len(seen) > 1 for seen in watcher.seen.values()),
            30,
            f"agents 1 and 3 seeing db2 leave healthy and come back ({watcher.seen})",
        )
        assert {e.host for e in events.of("db2", ("start",))} == {HOSTS[1]}
    assert agent_events(machines.agent(1), "db2", "start")
    assert not agent_events(machines.agent(0), "db2", "start") and not agent_events(
        machines.agent(2), "db2", "start"
    )
    for i in (0, 2):
        assert watcher.seen[i][0] == "healthy" and any(s != "healthy" for s in watcher.seen[i]), watcher.seen
    # Agent 2's metrics: the exit it did not cause, and the restart, on db2's host.
    samples = scrape(machines.agent(1).url)
    exits = {
        labels["node"]: (labels["host"], v) for labels, v in samples["ceres_supervisor_node_last_exit_code"]
    }
    assert exits["db2"] == (HOSTS[1], 137.0), exits
    died = [
        v
        for labels, v in samples["ceres_supervisor_restarts_total"]
        if labels["node"] == "db2" and labels["reason"] == "died" and labels["cluster"] == machines.name
    ]
    assert died and died[0] >= 1


def test_two_failing_nodes_on_two_hosts_are_stopped_one_after_the_other(machines: Machines) -> None:
    def slot_held() -> list[tuple[str, float]]:
        return [
            (labels["node"], v)
            for i in (0, 2)
            for labels, v in scrape(machines.agent(i).url).get(
                "ceres_supervisor_disruption_slot_held_seconds", []
            )
        ]

    with machines.events() as events:
        machines.fault("db0", "freeze-http")  # host 1
        machines.fault("db4", "freeze-http")  # host 3, at the same moment
        held = wait_until(
            slot_held, 180, "a disruption slot in the metrics while a node is stopped by choice", 0.2
        )
        assert {node for node, _ in held} <= {"db0", "db4"} and all(v >= 0 for _, v in held), held
        wait_until(
            lambda: len(events.chosen_stops("db0")) == 1 and len(events.chosen_stops("db4")) == 1,
            180,
            "both stopped by their agents",
        )
        machines.wait_healthy()
        most, intervals = events.most_down_at_once("ceresdb")
    assert most == 1, intervals
    assert {e.host for e in events.chosen_stops()} == {HOSTS[0], HOSTS[2]}
    failed = {
        labels["node"]: v
        for labels, v in scrape(machines.agent(0).url)["ceres_supervisor_probe_failures_total"]
    }
    assert failed.get("db0", 0) >= 3, failed  # failure_threshold failed probes before it was stopped


def test_a_frozen_docker_engine_makes_its_nodes_unknown_and_holds_the_budget(machines: Machines) -> None:
    """Machine 2's dockerd hangs (its containers keep running): the other agents see its nodes
    `unknown` (published so by agent 2, whose observation times out, or gone with its lease) and
    count them as down, so a failing db0 on machine 1 waits; once Docker answers again, db0 is
    stopped once and nothing else is."""
    engine = machines.engines[1]
    mine = ("meta1", "db2", "db3")
    with machines.events() as events:
        engine.freeze()
        try:
            wait_until(
                lambda: all(machines.states(i).get(n) == "unknown" for i in (0, 2) for n in mine),
                3 * AGENT_TTL_S,
                "agents 1 and 3 seeing machine 2's nodes unknown",
            )
            machines.fault("db0", "freeze-http")
            wait_until(
                lambda: (
                    "waiting for disruption budget" in machines.reason(0, "db0")
                    and "db2 (unknown" in machines.reason(0, "db0")
                ),
                60,
                "db0 held back by machine 2's nodes",
            )
            assert events.chosen_stops() == []
        finally:
            engine.thaw()
        wait_until(
            lambda: len(events.chosen_stops("db0")) == 1, 90, "db0 stopped once machine 2 answers again"
        )
        machines.wait_healthy()
        assert [(e.node, e.host) for e in events.chosen_stops()] == [("db0", HOSTS[0])]


def test_an_agent_cut_from_its_watch_member_keeps_every_pause(machines: Machines) -> None:
    """Agent 3's watch member is partitioned (its proxy frozen), its writes fail over to the
    others: its view is not confirmed any more and must neither undo a pause nor let a node go.
    A pause asked on agent 3 during the partition holds everywhere, and db4 is never restarted."""
    doc = machines.cluster(2)
    assert doc is not None
    watched = next(p for p in machines.proxies if doc["coordination"]["watch"] == f"http://{p.address}")  # type: ignore[index]
    pause_file = machines.root / "state" / f"paused-{HOSTS[2]}.json"  # agent 3's own book
    with machines.events() as events:
        watched.freeze()
        try:
            code, answer = http_json(
                machines.agent(2).url + "/v1/nodes/db4/pause", {"who": "cli"}, timeout_s=30
            )
            assert code == 200, answer
            machines.container("db4").pause()  # the operator's maintenance
            wait_until(
                lambda: all(machines.states(i).get("db4") == "paused" for i in range(3)),
                60,
                "db4 paused on every machine",
            )
            assert '"db4"' in pause_file.read_text()
        finally:
            watched.thaw()
        wait_until(
            lambda: (machines.cluster(2) or {}).get("coordination", {}).get("ok") is True,
            60,  # type: ignore[union-attr]
            "agent 3's view confirmed again",
        )
        assert all(machines.states(i).get("db4") == "paused" for i in range(3))
        assert '"db4"' in pause_file.read_text()
        assert events.chosen_stops() == [] and not events.of("db4", ("start", "die"))
        machines.container("db4").unpause()
        code, _ = http_json(machines.agent(0).url + "/v1/nodes/db4/resume", {"who": "cli"}, timeout_s=30)
        assert code == 200
    machines.wait_healthy()


def test_without_the_store_an_agent_stops_nothing_by_choice_and_still_restarts_crashes(
    machines: Machines,
) -> None:
    """Agent 3 cut from every etcd member (its three proxies frozen), the cluster otherwise fine:
    its failing db4 waits ("coordination unavailable", the failsafe), its crashed db5 is restarted
    at once (the loop never waits on the store); once the store answers, db4 is stopped, once."""
    with machines.events() as events:
        for proxy in machines.proxies:
            proxy.freeze()
        try:
            wait_until(
                lambda: (machines.cluster(2) or {}).get("coordination", {}).get("ok") is False,
                30,  # type: ignore[union-attr]
                "agent 3 without the store",
            )
            machines.fault("db4", "freeze-http")
            wait_until(
                lambda: "coordination unavailable" in machines.reason(2, "db4"),
                60,
                "db4 held back by the failsafe",
            )
            kill_main_process(machines.container("db5"))
            events.wait_for("db5 restarted while the store is away", 20, "db5")
            assert events.chosen_stops() == []
        finally:
            for proxy in machines.proxies:
                proxy.thaw()
        wait_until(lambda: len(events.chosen_stops("db4")) == 1, 90, "db4 stopped once the store answers")
        machines.wait_healthy()
        assert [e.node for e in events.chosen_stops()] == ["db4"]


def test_a_rolling_restart_crosses_machines_and_a_second_one_is_refused(machines: Machines) -> None:
    """Started on agent 1, it restarts the meta members one at a time (the leader last), the other
    machines' through their agents' advertised addresses; a second one asked on agent 2 meanwhile
    is refused naming the first."""
    with machines.events() as events:
        code, answer = http_json(
            machines.agent(0).url + "/v1/rolling-restart", {"role": "meta", "who": "cli"}, timeout_s=30
        )
        assert code == 202, answer
        op = answer["operation"]  # type: ignore[index]
        code, refused = http_json(machines.agent(1).url + "/v1/rolling-restart", {"who": "cli"}, timeout_s=30)
        assert code == 409 and HOSTS[0] in refused["error"], refused  # type: ignore[index]

        def outcome() -> object:
            _c, doc = machines.agent(0).get(f"/v1/operations/{op}")
            return doc.get("outcome") if isinstance(doc, dict) else None

        wait_until(outcome, 300, "the rolling restart done", 1.0)
        assert outcome() == "ok", machines.agent(0).get(f"/v1/operations/{op}")
        machines.wait_healthy()
        stopped = [(e.node, e.host) for e in events.chosen_stops()]
        most, intervals = events.most_down_at_once("meta")
    assert sorted(stopped) == [("meta0", HOSTS[0]), ("meta1", HOSTS[1]), ("meta2", HOSTS[2])], stopped
    assert most == 1, intervals
    for i, node in ((1, "meta1"), (2, "meta2")):  # asked through their agents, who asked is kept
        started = agent_events(machines.agent(i), node, "operation_started")
        assert started and f"{op} on {HOSTS[0]}" in str(started[-1]["reason"]), started


def test_a_killed_agent_is_seen_down_its_nodes_hold_the_budget_and_it_adopts_them(machines: Machines) -> None:
    before = machines.identities()
    agent = machines.agent(1)
    assert agent.process is not None
    os.kill(agent.process.pid, signal.SIGKILL)
    agent.wait(10)
    mine = ("meta1", "db2", "db3")

    def seen_down(i: int) -> bool:
        doc = machines.cluster(i)
        if doc is None:
            return False
        nodes = {n["name"]: n for n in doc["nodes"]}  # type: ignore[index]
        down = {a["host"] for a in doc["agents"] if a["state"] == "down"}  # type: ignore[union-attr,index]
        return HOSTS[1] in down and all(
            nodes[n]["state"] == "unknown"
            and nodes[n]["reason"].startswith(f"supervisor on {HOSTS[1]} down since")
            for n in mine
        )

    wait_until(lambda: seen_down(0) and seen_down(2), AGENT_TTL_S + 10, "agents 1 and 3 seeing agent 2 down")
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert commands.main(["status", "--url", machines.agent(0).url]) == 1
    assert f"agent {HOSTS[1]} DOWN since" in out.getvalue()
    assert all(machines.container(n).status == "running" for n in mine)
    # The lost machine on the other agents' metrics and tools: its agent down, its nodes unknown.
    samples = scrape(machines.agent(0).url)
    assert {labels["host"]: v for labels, v in samples["ceres_supervisor_agent_up"]}[HOSTS[1]] == 0
    unknown = {
        labels["node"]
        for labels, v in samples["ceres_supervisor_node_state"]
        if labels["state"] == "unknown" and v == 1
    }
    assert unknown == set(mine) and all(
        labels["host"] == HOSTS[1]
        for labels, v in samples["ceres_supervisor_node_state"]
        if labels["node"] in mine
    )
    code, out, _err = cli("describe", "db2", "--url", machines.agent(0).url, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["state"] == "unknown" and doc["source"]["complete"] is False
    assert doc["source"]["error"].startswith(f"the supervisor on {HOSTS[1]} is down since"), doc["source"]
    code, _out, err = cli("logs", "db2", "--url", machines.agent(0).url)
    assert code == 3 and err.startswith(
        f"error: cannot read the logs of db2: the supervisor on {HOSTS[1]} is down"
    )
    code, _out, err = cli("events", "--url", machines.agent(0).url, "-n", "1")
    assert code == 0 and f"note: no events from {HOSTS[1]}: down since" in err

    with machines.events() as events:
        machines.fault("db0", "freeze-http")
        wait_until(
            lambda: (
                "waiting for disruption budget" in machines.reason(0, "db0")
                and "db2 (unknown" in machines.reason(0, "db0")
            ),
            60,
            "db0 held back by the budget while agent 2 is down",
        )
        assert events.chosen_stops() == []
        machines.start_agent(1, int(agent.listen.rsplit(":", 1)[1]))
        wait_until(
            lambda: len(events.chosen_stops("db0")) == 1, 90, "db0 stopped once agent 2 publishes again"
        )
        machines.wait_healthy()
        assert [(e.node, e.host) for e in events.chosen_stops()] == [("db0", HOSTS[0])]
    after = machines.identities()
    assert {n: v for n, v in after.items() if n != "db0"} == {
        n: v for n, v in before.items() if n != "db0"
    }, "the returning agent restarted something"


CHANGED_DB = ("db0", "db2", "db4")
CHANGED = ("meta0", "meta1", "meta2", *CHANGED_DB)


def test_a_rolling_change_goes_meta_first_one_node_at_a_time_cluster_wide(machines: Machines) -> None:
    before = machines.identities()
    text = machines.config.read_text()
    changed = text.replace("[meta]\n", "[meta]\nconfig = { lease-sec = 11 }\n", 1)
    for node in CHANGED_DB:  # one CeresDB node on each machine: the order crosses machines
        changed = changed.replace(
            f'name = "{node}"\n', f'name = "{node}"\nconfig = {{ logger = {{ level = "debug" }} }}\n'
        )
    machines.config.write_text(changed)
    with machines.events() as events:
        for i in (2, 0, 1):  # every agent, in any order
            code, body = http_json(machines.agent(i).url + "/v1/reload", {}, timeout_s=60)
            assert code == 200, body
        try:
            wait_until(
                lambda: {e.node for e in events.of(actions=("destroy",))} == set(CHANGED),
                240,  # six recreations one at a time, each CeresDB node back with its shards: ~1 min
                "every changed node recreated",
                1.0,
            )
        except AssertionError as err:
            recreated = [e.node for e in events.of(actions=("destroy",))]
            raise AssertionError(f"{err}; recreated {recreated}\n{machines.describe()}") from None
        machines.wait_healthy(240)
        recreated = [e.node for e in events.of(actions=("destroy",))]
        most, intervals = events.most_down_at_once()
    assert sorted(recreated) == sorted(CHANGED), recreated
    for i in range(3):
        samples = scrape(machines.agent(i).url)
        assert [v for _l, v in samples["ceres_supervisor_reload_success"]] == [1.0]
        assert [
            labels["host"] for labels, _v in samples["ceres_supervisor_last_reload_timestamp_seconds"]
        ] == [HOSTS[i]]
        assert [v for _l, v in samples["ceres_supervisor_spec_hashes_differ"]] == [0.0]
    assert set(recreated[:3]) == {"meta0", "meta1", "meta2"}, f"meta first: {recreated}"
    assert most == 1, intervals
    after = machines.identities()
    assert all(after[n][0] != before[n][0] for n in CHANGED)
    assert all(after[n] == before[n] for n in ALL if n not in CHANGED), "an unchanged node was touched"
